"""TransformerLens's config fields and toy-model architectures: ARENA's attention-only model
(attn_only, normalization_type=None, shortformer positions), d_vocab_out, n_params, from_dict, the
switches it accepts, and loading its state dicts. Numbers are checked against the computation written
out by hand from the weights."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import assert_close, tiny_tokenizer
from torch import nn

from hooked import HookedTransformer, HookedTransformerConfig
from hooked.components.kv_cache import KVCache
from hooked.components.norms import RMSNorm, RMSNormPre

# ARENA's attention-only induction model (chapter 1.2), exactly as the tutorial configures it.
ARENA = dict(
    d_model=768,
    d_head=64,
    n_heads=12,
    n_layers=2,
    n_ctx=2048,
    d_vocab=50278,
    attention_dir="causal",
    attn_only=True,
    tokenizer_name="EleutherAI/gpt-neox-20b",
    seed=398,
    use_attn_result=True,
    normalization_type=None,
    positional_embedding_type="shortformer",
)
# The same architecture, small; no tokenizer to load.
SMALL = {**ARENA, "d_model": 32, "d_head": 8, "n_heads": 4, "n_ctx": 24, "d_vocab": 50, "tokenizer_name": None}


def small_model(**changes) -> HookedTransformer:
    """A SMALL model with every parameter random (biases and positions too, so each of them matters)."""
    model = HookedTransformer(HookedTransformerConfig(**{**SMALL, **changes})).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


def reference_logits(model: HookedTransformer, tokens: torch.Tensor, zero_q_input_layer: int = -1) -> torch.Tensor:
    """An attention-only shortformer model without norms, from its weights: the positions are added to the
    query and key inputs of every layer and nowhere else. `zero_q_input_layer`: that layer's query input
    (before the positions are added) is zero, as a hook on its hook_q_input that zeroes it makes it."""
    n_pos = tokens.shape[1]
    resid = model.W_E[tokens]
    pos = model.W_pos[:n_pos]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    for layer in range(model.cfg.n_layers):
        q_in = (torch.zeros_like(resid) if layer == zero_q_input_layer else resid) + pos
        q = torch.einsum("bpm,nmh->bpnh", q_in, model.W_Q[layer]) + model.b_Q[layer]
        k = torch.einsum("bpm,nmh->bpnh", resid + pos, model.W_K[layer]) + model.b_K[layer]
        v = torch.einsum("bpm,nmh->bpnh", resid, model.W_V[layer]) + model.b_V[layer]
        scores = torch.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(model.cfg.d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bnqk,bknh->bqnh", pattern, v)
        resid = resid + torch.einsum("bqnh,nhm->bqm", z, model.W_O[layer]) + model.b_O[layer]
    return resid @ model.W_U + model.b_U


def test_arena_config_builds_and_runs():
    cfg = HookedTransformerConfig(**ARENA)
    assert cfg.d_vocab_out == 50278 and cfg.attn_only and cfg.normalization_type is None
    assert cfg.n_params == 2 * 768 * 64 * 12 * 4  # TransformerLens's count: no MLP in an attention-only model
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer())  # a tokenizer passed in: tokenizer_name is not loaded
    # TransformerLens's attn-only state dict, less its attention buffers and (zero here) b_U.
    attn = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"]
    expected = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U"}
    expected |= {f"blocks.{i}.attn.{name}" for i in range(2) for name in attn}
    assert set(model.state_dict()) == expected
    logits = model(torch.tensor([[0, 5, 50277, 7, 5, 50277]]))
    assert logits.shape == (1, 6, 50278) and bool(logits.isfinite().all())


def test_shortformer_positions_go_only_to_queries_and_keys():
    model = small_model()
    tokens = torch.randint(0, 50, (2, 9))
    logits, cache = model.run_with_cache(tokens)
    assert_close(logits, reference_logits(model, tokens), "logits")
    # Not in the residual stream: it starts as the token embedding alone.
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"])
    assert torch.equal(cache["hook_pos_embed"], model.W_pos[:9].expand(2, -1, -1))
    # Not in the values: other positions change q and k, and leave v as it was.
    with torch.no_grad():
        model.pos_embed.W_pos.normal_()
    _, moved = model.run_with_cache(tokens)
    for name, changes in [("q", True), ("k", True), ("v", False)]:
        assert torch.equal(moved[name, 0], cache[name, 0]) != changes, name
    assert_close(model(tokens), reference_logits(model, tokens), "logits")


def test_shortformer_hooks_and_paths_agree_with_the_reference():
    model = small_model()
    tokens = torch.randint(0, 50, (2, 9))
    # A hook on hook_pos_embed changes what attention sees.
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", lambda x, hook: torch.zeros_like(x))])
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
    assert_close(zeroed, reference_logits(model, tokens), "logits")
    model = small_model()
    # The per-head inputs are before the positions are added, as in TransformerLens's block.
    zero_q = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_q_input", lambda x, hook: torch.zeros_like(x))])
    assert_close(zero_q, reference_logits(model, tokens, zero_q_input_layer=1), "logits")
    # The explicit (pattern-hooked) path, starting at a layer, and decoding with a cache.
    full, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("pattern", "resid_pre")))
    assert_close(full, reference_logits(model, tokens), "logits")
    assert_close(model(cache["resid_pre", 1], start_at_layer=1), full, "logits")
    kv = KVCache.for_model(model)
    pieces = [model(tokens[:, :5], past_kv_cache=kv), model(tokens[:, 5:7], past_kv_cache=kv)]
    pieces.append(model(tokens[:, 7:], past_kv_cache=kv))
    assert_close(torch.cat(pieces, dim=1), full, "logits")


def test_shortformer_with_layer_norm_adds_positions_after_ln1():
    model = small_model(attn_only=False, normalization_type="LN", d_mlp=16, act_fn="gelu_new")
    tokens = torch.randint(0, 50, (1, 7))
    _, cache = model.run_with_cache(tokens)
    ln1 = model.blocks[0].ln1
    normalized = cache["blocks.0.ln1.hook_normalized"] * ln1.w + ln1.b
    pos = model.W_pos[:7]
    q = torch.einsum("bpm,nmh->bpnh", normalized + pos, model.W_Q[0]) + model.b_Q[0]
    v = torch.einsum("bpm,nmh->bpnh", normalized, model.W_V[0]) + model.b_V[0]
    assert_close(cache["q", 0], q, "resid")
    assert_close(cache["v", 0], v, "resid")


def test_attn_only_blocks_have_no_mlp():
    model = small_model()
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if ".mlp." in name or "ln" in name], names
    assert model.cfg.d_mlp == 0
    for name in ("hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "ln2.hook_scale", "mlp.hook_post"):
        assert f"blocks.0.{name}" not in model.hook_dict
        with pytest.raises(KeyError, match="No hook point named"):  # never a hook silently ignored
            model.add_hook(f"blocks.0.{name}", lambda x, hook: x)
    _, cache = model.run_with_cache(torch.randint(0, 50, (2, 6)))
    for layer in range(2):
        resid_pre, attn_out = cache["resid_pre", layer], cache["attn_out", layer]
        assert torch.equal(cache["resid_post", layer], resid_pre + attn_out)


def test_no_normalization_is_the_identity():
    model = small_model(attn_only=False, positional_embedding_type="standard", d_mlp=16, act_fn="relu")
    assert all(isinstance(m, nn.Identity) for b in model.blocks for m in (b.ln1, b.ln2))
    assert isinstance(model.ln_final, nn.Identity)
    assert not any("ln" in name for name in model.hook_dict)
    tokens = torch.randint(0, 50, (2, 6))
    _, cache = model.run_with_cache(tokens)
    q = torch.einsum("bpm,nmh->bpnh", cache["resid_pre", 1], model.W_Q[1]) + model.b_Q[1]
    assert_close(cache["q", 1], q, "resid")
    pre = cache["resid_mid", 0] @ model.W_in[0] + model.b_in[0]
    assert_close(cache["pre", 0], pre, "resid")
    assert torch.equal(cache["unembed.hook_in"], cache["resid_post", 1])


def test_load_state_dict_round_trips():
    model, other = small_model(), small_model()
    tokens = torch.randint(0, 50, (2, 8))
    assert not torch.equal(model(tokens), other(tokens))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # ARENA's flow: torch.load a saved state dict
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(other(tokens), model(tokens))


def test_transformerlens_state_dict_loads():
    """TransformerLens's state dicts also hold attention buffers and always a b_U (GQA: _W_K, _W_V, ...)."""
    source = small_model()
    tl_state = dict(source.state_dict())
    for layer in range(2):
        tl_state[f"blocks.{layer}.attn.mask"] = torch.ones(24, 24, dtype=torch.bool).tril()
        tl_state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-torch.inf)
    tl_state["unembed.b_U"] = torch.randn(50)
    model = HookedTransformer(HookedTransformerConfig(**SMALL))
    model.load_state_dict(tl_state)
    assert model.cfg.unembed_bias and torch.equal(model.unembed.b_U, tl_state["unembed.b_U"])
    tokens = torch.randint(0, 50, (2, 8))
    assert_close(model(tokens), reference_logits(source, tokens) + tl_state["unembed.b_U"], "logits")
    # A zero bias the model does not have is exactly what it computes: dropped.
    model = HookedTransformer(HookedTransformerConfig(**SMALL))
    model.load_state_dict({**tl_state, "unembed.b_U": torch.zeros(50)})
    assert model.unembed.b_U is None and not model.cfg.unembed_bias
    with pytest.raises(RuntimeError, match="W_foo"):  # anything else still fails
        model.load_state_dict({**tl_state, "blocks.0.attn.W_foo": torch.zeros(1)})
    gqa = small_model(n_key_value_heads=2)
    renamed = {
        name.replace(".W_K", "._W_K").replace(".W_V", "._W_V").replace(".b_K", "._b_K").replace(".b_V", "._b_V"): t
        for name, t in gqa.state_dict().items()
    }
    fresh = HookedTransformer(gqa.cfg)
    fresh.load_state_dict(renamed)
    assert torch.equal(fresh(tokens), gqa(tokens))


def test_seed_init_weights_dtype_and_device():
    cfg = HookedTransformerConfig(**SMALL)
    state = torch.random.get_rng_state()
    a, b = HookedTransformer(cfg), HookedTransformer(cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(a.W_Q, b.W_Q) and torch.equal(a.W_E, b.W_E)
    assert not torch.equal(HookedTransformer(cfg.replace(seed=1)).W_Q, a.W_Q)
    wide = HookedTransformer(cfg.replace(dtype="float64", device="cpu"))
    assert wide.W_E.dtype == torch.float64 and wide.cfg.dtype == torch.float64 and wide.device.type == "cpu"
    assert HookedTransformer(cfg.replace(dtype=torch.bfloat16, seed=None)).dtype == torch.bfloat16


def test_init_weights_false_skips_the_init(monkeypatch):
    calls = []
    monkeypatch.setattr(HookedTransformer, "init_weights", lambda self: calls.append(self))
    HookedTransformer(HookedTransformerConfig(**SMALL, init_weights=False))
    assert calls == []
    HookedTransformer(HookedTransformerConfig(**SMALL))
    assert len(calls) == 1


def test_d_vocab_out_sizes_the_unembedding():
    model = small_model(d_vocab_out=7, unembed_bias=True)
    assert model.W_U.shape == (32, 7) and model.b_U.shape == (7,) and model.W_E.shape == (50, 32)
    assert model(torch.randint(0, 50, (1, 5))).shape == (1, 5, 7)


def test_n_params_is_transformerlens_count():
    # GPT-2 small: TransformerLens prints n_params 84934656 (ARENA's notes show its cfg).
    gpt2 = HookedTransformerConfig(d_model=768, n_layers=12, n_heads=12, d_vocab=50257, n_ctx=1024, d_mlp=3072)
    assert gpt2.n_params == 84934656
    gated = HookedTransformerConfig(d_model=32, n_layers=3, n_heads=4, d_vocab=9, n_ctx=8, d_mlp=48, gated_mlp=True)
    assert gated.n_params == 3 * (32 * 8 * 4 * 4 + 32 * 48 * 3)
    moe = gated.replace(num_experts=4, experts_per_token=2)
    assert moe.n_params == 3 * (32 * 8 * 4 * 4 + (32 * 48 * 3 + 32) * 4)


def test_from_dict_to_dict_and_a_dict_as_config():
    cfg = HookedTransformerConfig.from_dict(SMALL)
    assert cfg == HookedTransformerConfig(**SMALL) and cfg.seed == 398
    as_dict = cfg.to_dict()
    assert as_dict["n_params"] == cfg.n_params and as_dict["d_vocab_out"] == 50
    assert HookedTransformerConfig.from_dict(as_dict) == cfg
    # TransformerLens writes None for fields it derives.
    assert HookedTransformerConfig.from_dict({**SMALL, "d_mlp": None, "n_key_value_heads": None}) == cfg
    with pytest.raises(TypeError, match="'window_size'"):
        HookedTransformerConfig.from_dict({**SMALL, "window_size": 4})
    with pytest.raises(ValueError, match="n_params"):
        HookedTransformerConfig.from_dict({**as_dict, "n_params": 1})
    assert HookedTransformer(dict(SMALL)).cfg == cfg


def test_final_rms_and_rms_pre():
    model = HookedTransformer(HookedTransformerConfig(**{**SMALL, "normalization_type": "LN", "final_rms": True}))
    assert type(model.ln_final) is RMSNorm and type(model.blocks[0].ln1).__name__ == "LayerNorm"
    model = HookedTransformer(HookedTransformerConfig(**{**SMALL, "normalization_type": "LNPre", "final_rms": True}))
    assert type(model.ln_final) is RMSNormPre
    model = HookedTransformer(HookedTransformerConfig(**{**SMALL, "normalization_type": "RMSPre"}))
    x = torch.randn(2, 3, 32)
    assert_close(model.blocks[0].ln1(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt(), "resid")


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"positional_embedding_type": "sinusoidal"}, ValueError, "positional_embedding_type.*'shortformer'"),
        ({"normalization_type": "BN"}, ValueError, "normalization_type.*'RMSPre', None"),
        ({"act_fn": "solu_ln"}, ValueError, "act_fn.*'gelu_new'"),
        ({"attention_dir": "bidirectional"}, NotImplementedError, "attention_dir.*'causal'"),
        ({"qk_norm": "shared"}, ValueError, "qk_norm.*normalization_type"),
        ({"tie_word_embeddings": True, "d_vocab_out": 7}, ValueError, "d_vocab_out"),
        ({"parallel_attn_mlp": True}, ValueError, "attn_only"),
        ({"dtype": "float99"}, ValueError, "dtype"),
    ],
)
def test_unsupported_values_raise_naming_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        HookedTransformerConfig(**{**SMALL, **changes})


def test_tokenizer_name_is_loaded_or_the_failure_named(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")  # a local folder: the hub is not reachable from tests
    model = HookedTransformer(HookedTransformerConfig(**{**SMALL, "tokenizer_name": str(tmp_path / "tok")}))
    assert model.to_str_tokens("the cat", prepend_bos=False) == ["the", " cat"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match=r"(?s)tokenizer_name='.*empty'.*Pass tokenizer="):
        HookedTransformer(HookedTransformerConfig(**{**SMALL, "tokenizer_name": str(tmp_path / "empty")}))


def test_weight_processing_refuses_these_models():
    model = small_model()
    for step in (model.fold_layer_norm, model.center_writing_weights, model.fold_value_biases):
        with pytest.raises(NotImplementedError, match="attn_only or shortformer"):
            step()


def test_residual_analysis_of_an_attention_only_shortformer_model():
    """ARENA's analyses of its attn-only model: decompositions (embeddings and heads only: shortformer
    positions never enter the residual) sum to the residual, and direct logit attribution to the logits."""
    model = small_model()
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    final = cache["resid_post", -1]
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "1_attn_out"]
    assert torch.allclose(stack.sum(0), final, atol=1e-5)
    for expand_neurons in (True, False):
        full = cache.get_full_resid_decomposition(expand_neurons=expand_neurons)
        assert torch.allclose(full.sum(0), final, atol=1e-5)
    assert torch.equal(cache.accumulated_resid()[-1], final)
    attrs = cache.logit_attrs(cache.get_full_resid_decomposition(pos_slice=-1), 3, 5, pos_slice=-1)
    b_U = model.unembed.b_U if model.unembed.b_U is not None else torch.zeros(50)
    expected = logits[:, -1, 3] - logits[:, -1, 5] - (b_U[3] - b_U[5])
    assert torch.allclose(attrs.sum(0), expected, atol=1e-4)
    for refused in (
        lambda: cache.accumulated_resid(incl_mid=True),
        lambda: cache.decompose_resid(layer=1, mlp_input=True),
        lambda: cache.get_neuron_results(0),
    ):
        with pytest.raises(ValueError, match="attention-only"):
            refused()


def test_cfg_device_and_dtype_follow_the_weights():
    """TransformerLens code reads model.cfg.device and model.cfg.dtype."""
    model = small_model()
    assert (model.cfg.device, model.cfg.dtype) == ("cpu", torch.float32)
    model.to(torch.bfloat16)
    assert model.cfg.dtype == torch.bfloat16 and model.cfg.device == "cpu"
    assert model.cfg == small_model().cfg  # device and dtype are not architecture: configs still compare equal


def test_the_inverse_layer_scale_needs_no_mapping_for_transformerlens(tmp_path):
    """TransformerLens's config names GPT-2's scale_attn_by_inverse_layer_idx as transformers and hooked do,
    with the same meaning (its attention multiplies attn_scale by layer_id + 1): a TransformerLens dict that
    sets it builds layers whose scores are q.k / (sqrt(d_head) * (layer + 1)), and hooked.compat's
    convert_hf_model_config reports it for a checkpoint that sets it."""
    from conftest import save_tiny
    from transformers import GPT2Config

    import hooked.compat

    model = small_model(scale_attn_by_inverse_layer_idx=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randint(0, 50, (1, 6)))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    for layer in range(model.cfg.n_layers):
        q, k = cache["q", layer], cache["k", layer]  # shortformer: no rotary, so these are what is compared
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (math.sqrt(8) * (layer + 1))
        got = cache["attn_scores", layer]
        assert_close(got[..., causal], scores[..., causal], "resid", label=f"layer {layer}'s scores")
    gpt2 = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16, scale_attn_by_inverse_layer_idx=True
    )
    save_tiny(gpt2, tmp_path)
    assert hooked.compat.convert_hf_model_config(str(tmp_path))["scale_attn_by_inverse_layer_idx"] is True

"""The HookedTransformer itself: hook names, hooks taking effect, the two attention paths, forward options."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, tiny_llama, tiny_tokenizer

from hooked import HookedTransformer, HookedTransformerConfig

LLAMA_LIKE = tiny_llama(n_layers=2, d_vocab=128, n_ctx=40)
GPT2_LIKE = HookedTransformerConfig(d_model=32, n_layers=2, n_heads=4, d_vocab=128, n_ctx=40)


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    cfg = LLAMA_LIKE if request.param == "llama" else GPT2_LIKE
    return HookedTransformer(cfg, tokenizer=tiny_tokenizer()).eval()


BLOCK_HOOKS = [
    "hook_resid_pre",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]


def test_golden_hook_names():
    """The full list for a one-layer rotary gated model, written out by hand from API.md."""
    model = HookedTransformer(LLAMA_LIKE.replace(n_layers=1))
    expected = {
        "hook_tokens",
        "hook_embed",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
        "unembed.hook_in",
        "unembed.hook_out",
    } | {f"blocks.0.{h}" for h in BLOCK_HOOKS}
    assert set(model.hook_dict) == expected

    gpt2 = HookedTransformer(GPT2_LIKE.replace(n_layers=1))
    not_in_gpt2 = {"attn.hook_rot_q", "attn.hook_rot_k", "mlp.hook_pre_linear"}
    expected = {
        "hook_tokens",
        "hook_embed",
        "hook_pos_embed",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
        "unembed.hook_in",
        "unembed.hook_out",
    } | {f"blocks.0.{h}" for h in BLOCK_HOOKS if h not in not_in_gpt2}
    assert set(gpt2.hook_dict) == expected


def test_hook_shapes_follow_the_contract():
    model = HookedTransformer(LLAMA_LIKE)
    B, P, H, Hkv, D, Dh, M, V = 2, 7, 4, 2, 32, 8, 48, 128
    _, cache = model.run_with_cache(torch.randint(0, V, (B, P)))
    expected = {
        "hook_tokens": (B, P),
        "hook_embed": (B, P, D),
        "blocks.0.hook_attn_in": (B, P, H, D),
        "blocks.0.hook_q_input": (B, P, H, D),
        "blocks.0.hook_k_input": (B, P, Hkv, D),
        "blocks.0.ln1.hook_scale": (B, P, 1),
        "blocks.0.attn.hook_q": (B, P, H, Dh),
        "blocks.0.attn.hook_k": (B, P, Hkv, Dh),
        "blocks.0.attn.hook_rot_k": (B, P, Hkv, Dh),
        "blocks.0.attn.hook_attn_scores": (B, H, P, P),
        "blocks.0.attn.hook_pattern": (B, H, P, P),
        "blocks.0.attn.hook_z": (B, P, H, Dh),
        "blocks.0.attn.hook_result": (B, P, H, D),
        "blocks.0.mlp.hook_pre": (B, P, M),
        "blocks.0.mlp.hook_pre_linear": (B, P, M),
        "blocks.1.hook_resid_post": (B, P, D),
        "unembed.hook_out": (B, P, V),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name


def test_identity_hooks_everywhere_are_bit_identical(model):
    model.set_attn_implementation("eager")
    tokens = torch.randint(0, 128, (2, 9))
    plain = model(tokens)
    calls = []

    def identity(x, hook):
        calls.append(hook.name)
        return x

    hooked = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, identity)])
    assert set(calls) == set(model.hook_dict)
    assert torch.equal(plain, hooked)


def test_sdpa_and_explicit_attention_agree(model):
    tokens = torch.randint(0, 128, (3, 11))
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0
    for attention_mask in (None, mask):
        fast = model(tokens, attention_mask=attention_mask)
        model.set_attn_implementation("eager")
        slow = model(tokens, attention_mask=attention_mask)
        model.set_attn_implementation("sdpa")
        assert_close(fast, slow, "sdpa_vs_eager")
        assert not torch.equal(fast, torch.zeros_like(fast))


def _perturb(x, hook):
    if hook.name == "hook_tokens":
        return (x + 1) % 128
    if hook.name.endswith("hook_attn_scores"):
        return x * 2.0
    if hook.name.endswith("hook_pattern"):
        return x.flip(-1).tril()  # still causal, but a different mixing of values
    return x * 1.5 + 0.1


def test_a_hook_on_every_point_takes_effect(model):
    """No flag to set: editing any hook point changes the logits."""
    tokens = torch.randint(0, 128, (1, 8))
    plain = model(tokens)
    for name in model.hook_dict:
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, _perturb)])
        assert not torch.allclose(edited, plain), f"a hook on {name} changed nothing"
    assert torch.equal(model(tokens), plain)  # and nothing stayed attached


def test_split_input_and_result_edits_match_manual_computation():
    """Editing one head's q input only changes that head's queries; per-head results sum to attn_out."""
    model = HookedTransformer(GPT2_LIKE)
    tokens = torch.randint(0, 128, (1, 6))
    _, cache = model.run_with_cache(tokens)
    attn = model.blocks[0].attn
    result_sum = cache["blocks.0.attn.hook_result"].sum(2) + attn.b_O
    assert_close(result_sum, cache["blocks.0.hook_attn_out"], "resid")

    def zero_head_1(x, hook):
        x[:, :, 1] = 0.0

    with model.hooks(fwd_hooks=[("blocks.0.hook_q_input", zero_head_1)]):
        _, edited = model.run_with_cache(tokens)
    q, q_edited = cache["blocks.0.attn.hook_q"], edited["blocks.0.attn.hook_q"]
    assert torch.allclose(q[:, :, [0, 2, 3]], q_edited[:, :, [0, 2, 3]], atol=1e-6)
    ln = model.blocks[0].ln1
    expected_head_1 = ln.b @ attn.W_Q[1] + attn.b_Q[1]  # LayerNorm of a zero vector is its bias
    assert_close(q_edited[0, :, 1], expected_head_1.expand(6, -1), "resid")
    assert torch.equal(edited["blocks.0.attn.hook_k"], cache["blocks.0.attn.hook_k"])


def test_return_types_and_per_token_loss(model):
    tokens = torch.randint(0, 128, (2, 8))
    logits = model(tokens)
    assert model(tokens, return_type=None) is None
    both_logits, loss = model(tokens, return_type="both")
    assert torch.equal(both_logits, logits)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 7)
    log_probs = logits.log_softmax(-1)
    by_hand = -log_probs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert_close(per_token, by_hand, "logits")
    assert_close(loss, by_hand.mean(), "logits")


def test_start_and_stop_at_layer_compose(model):
    model.set_attn_implementation("eager")  # so the cached run and the plain run share one attention path
    tokens = torch.randint(0, 128, (2, 8))
    full = model(tokens)
    resid = model(tokens, stop_at_layer=1)
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(resid, cache["blocks.1.hook_resid_pre"])
    assert torch.equal(model(tokens, stop_at_layer=-1), resid)
    assert torch.equal(model(resid, start_at_layer=1), full)
    loss = model(resid, start_at_layer=1, tokens=tokens, return_type="loss")
    assert torch.equal(loss, model(tokens, return_type="loss"))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_never_changes_a_row(model, padding_side):
    prompts = ["the cat sat on the mat", "hello", "When Mary and John went"]
    batch_logits = model(prompts, padding_side=padding_side)
    for i, prompt in enumerate(prompts):
        alone = model(prompt)
        n = alone.shape[1]
        rows = batch_logits[i, -n:] if padding_side == "left" else batch_logits[i, :n]
        assert_close(rows, alone[0], "logits", label=f"row {i} ({padding_side} padded)")


def test_tokenizer_padding_side_is_the_default_and_left_padded_ids_get_their_mask(model):
    """As in TransformerLens: setting the tokenizer's padding_side changes where batches are padded, and a
    left-padded tensor of ids given without a mask is masked from its leading pad tokens."""
    prompts = ["the cat sat on the mat", "hello"]
    with torch.no_grad():
        alone = model(prompts[1])[0, -1]
        assert model.to_tokens(prompts)[1, -1].item() == model.tokenizer.pad_token_id  # right, by default
        assert torch.equal(model(model.to_tokens(prompts))[0], model(prompts)[0])  # right padding: no mask needed
        model.tokenizer.padding_side = "left"
        assert model.default_padding_side == "left"
        tokens = model.to_tokens(prompts)
        assert tokens[1, 0].item() == model.tokenizer.pad_token_id
        assert_close(model(tokens)[1, -1], alone, "logits")
        _, cache = model.run_with_cache(tokens)
        assert_close(
            cache["resid_post", -1][1, -1], model.run_with_cache(prompts[1])[1]["resid_post", -1][0, -1], "resid"
        )
        model.set_tokenizer(model.tokenizer)  # back to TransformerLens's default, right
    assert model.tokenizer.padding_side == "right" == model.default_padding_side


def test_a_pad_token_that_is_also_bos_keeps_the_bos(model):
    model.tokenizer.pad_token = model.tokenizer.bos_token
    model.set_tokenizer(model.tokenizer, default_padding_side="left")
    tokens = model.to_tokens(["the cat sat on the mat", "hello"])  # row 1: pads, then BOS (the same id), hello
    with torch.no_grad():
        assert_close(model(tokens)[1, -1], model("hello")[0, -1], "logits")


def test_batched_loss_ignores_padding(model):
    prompts = ["the cat sat on the mat", "hello world"]
    losses = [model(p, return_type="loss") for p in prompts]
    counts = [model.to_tokens(p).shape[1] - 1 for p in prompts]
    expected = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    assert_close(model(prompts, return_type="loss"), expected, "logits")


def test_token_helpers(model):
    tokens = model.to_tokens("hello world")
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_tokens("hello world", prepend_bos=False).shape[1] == tokens.shape[1] - 1
    assert model.to_string(tokens[0, 1:]) == "hello world"
    str_tokens = model.to_str_tokens("hello world")
    assert str_tokens[0] == "<bos>" and "".join(str_tokens[1:]) == "hello world"
    assert model.to_str_tokens(["a", "b"]) == [model.to_str_tokens("a"), model.to_str_tokens("b")]
    single = model.to_single_token("the")
    assert model.to_single_str_token(single) == "the"
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("hello world")
    text = "the cat sat on the mat by the door"
    hits = [i for i, piece in enumerate(model.to_str_tokens(text)) if piece == " the"]
    assert len(hits) == 2
    assert model.get_token_position(" the", text) == hits[0]
    assert model.get_token_position(" the", text, mode="last") == hits[1]
    padded = model.to_tokens(["hello world", "hello"], padding_side="left")
    assert padded[1, 0].item() == model.tokenizer.pad_token_id


def test_input_longer_than_context_raises(model):
    with pytest.raises(ValueError, match="n_ctx=40"):
        model(torch.zeros(1, 41, dtype=torch.long))
    assert model.to_tokens("hello world " * 40).shape[1] == 40  # to_tokens truncates by default


def test_gradients_flow_to_parameters(model):
    loss = model(torch.randint(0, 128, (2, 6)), return_type="loss")
    loss.backward()
    assert model.blocks[0].attn.W_Q.grad is not None and model.blocks[0].attn.W_Q.grad.abs().sum() > 0


def test_runtime_shape_checks_are_on_in_tests():
    """conftest installs jaxtyping's import hook: a wrongly shaped call fails at the signature."""
    from jaxtyping import TypeCheckError

    model = HookedTransformer(GPT2_LIKE)
    with pytest.raises(TypeCheckError):
        model.blocks[0].attn._write(torch.zeros(2, 3, 5))  # z must be [batch, pos, n_heads, d_head]


def test_caching_everything_observes_without_changing_numbers(model):
    """Caching hooks only read: the logits are bit-identical, and the per-head copies are what they claim."""
    model.set_attn_implementation("eager")
    tokens = torch.randint(0, 128, (2, 9))
    logits, cache = model.run_with_cache(tokens)
    assert torch.equal(logits, model(tokens))
    resid = cache["blocks.1.hook_resid_pre"]
    assert torch.equal(cache["blocks.1.hook_attn_in"], resid.unsqueeze(2).expand(-1, -1, model.cfg.n_heads, -1))
    assert torch.equal(cache["blocks.1.hook_k_input"][:, :, 0], resid)
    result = cache["blocks.1.attn.hook_result"]
    b_O = model.blocks[1].attn.b_O
    assert_close(result.sum(2) + (0 if b_O is None else b_O), cache["blocks.1.hook_attn_out"], "resid")


def test_logits_to_keep_gives_the_last_positions(model):
    tokens = torch.randint(0, 128, (2, 9))
    full = model(tokens)
    # Close, not equal: a matmul over fewer rows may block (and so round) differently.
    assert_close(model(tokens, logits_to_keep=1), full[:, -1:], "logits")
    assert_close(model(tokens, logits_to_keep=3), full[:, -3:], "logits")
    with pytest.raises(ValueError, match="loss"):
        model(tokens, return_type="loss", logits_to_keep=1)


def test_transformerlens_flag_setters_switch_nothing_off(model):
    """set_use_attn_result(False) and friends are accepted, and a hook on those points still takes effect."""
    tokens = torch.randint(0, 128, (1, 5))
    for setter in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in", "set_use_attn_in"):
        getattr(model, setter)(False)
    with torch.no_grad():
        clean = model(tokens)
        for name in (
            "blocks.0.attn.hook_result",
            "blocks.0.hook_q_input",
            "blocks.0.hook_mlp_in",
            "blocks.0.hook_attn_in",
        ):
            edited = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x * 0.5)])
            assert not torch.allclose(edited, clean), name


def test_a_block_called_directly(model):
    """TransformerLens let model.blocks[i](resid) run a block; ours does where the layer needs no positions,
    and otherwise says how to run it through the model."""
    tokens = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        if model.cfg.positional_embedding_type == "standard":
            assert_close(model.blocks[1](cache["resid_pre", 1]), cache["resid_post", 1], "resid")
        else:
            with pytest.raises(TypeError, match="start_at_layer=1, stop_at_layer=2"):
                model.blocks[1](cache["resid_pre", 1])
        assert_close(model(cache["resid_pre", 1], start_at_layer=1, stop_at_layer=2), cache["resid_post", 1], "resid")

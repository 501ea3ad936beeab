"""Weight processing: every step keeps the log-probs, refuses where it is not exact, and keeps the layout."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_LLAMA, assert_close, save_tiny
from transformers import GPT2Config, LlamaConfig

from hooked import HookedTransformer, HookedTransformerConfig, processing

BASE = dict(d_model=32, n_layers=2, n_heads=4, d_vocab=128, n_ctx=40, initializer_range=0.2)
LLAMA = {**TINY_LLAMA, **BASE}
VARIANTS = {
    "gpt2": HookedTransformerConfig(**BASE, unembed_bias=True),
    "gpt2_tied": HookedTransformerConfig(**BASE, tie_word_embeddings=True),
    "ln_no_biases": HookedTransformerConfig(**BASE, attn_qkv_bias=False, attn_out_bias=False, mlp_bias=False),
    "ln_rotary_gated": HookedTransformerConfig(**BASE, positional_embedding_type="rotary", gated_mlp=True),
    "ln_gqa": HookedTransformerConfig(**BASE, n_key_value_heads=2),
    "llama": HookedTransformerConfig(**LLAMA),
    "llama_tied": HookedTransformerConfig(**LLAMA, tie_word_embeddings=True),
    "qwen_qkv_bias": HookedTransformerConfig(**{**LLAMA, "attn_qkv_bias": True}),
    "rms_standard_mha": HookedTransformerConfig(
        **{**LLAMA, "n_key_value_heads": 4, "positional_embedding_type": "standard"}
    ),
}
FLAGS = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices"]
STEPS = [
    "fold_layer_norm",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
]


def refuses(variant: str, step: str) -> bool:
    """Where a step is not exact, by the architecture facts that make it so."""
    cfg = VARIANTS[variant]
    if step == "center_writing_weights":
        return cfg.normalization_type == "RMS"
    if step == "refactor_factored_attn_matrices":
        return cfg.positional_embedding_type == "rotary" or cfg.n_key_value_heads < cfg.n_heads
    return False


def perturbed(variant: str) -> HookedTransformer:
    """A random model whose norm weights and biases are far from the 1s and 0s of random init."""
    model = HookedTransformer(VARIANTS[variant]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif leaf.startswith("b_") or leaf == "b":
                param.copy_(0.2 * torch.randn_like(param))
    return model


def log_probs(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).log_softmax(-1)


TOKENS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_step_keeps_log_probs_or_refuses(variant, step):
    model = perturbed(variant)
    before = log_probs(model, TOKENS)
    if refuses(variant, step):
        with pytest.raises(ValueError, match=step):
            getattr(model, step)()
        return
    getattr(model, step)()
    after = log_probs(model, TOKENS)
    assert_close(after, before, "logits", label=f"{variant}: log-probs after {step}")
    assert not torch.equal(after, torch.zeros_like(after))


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_applicable_steps_together(variant):
    model = perturbed(variant)
    with torch.no_grad():
        logits_before = model(TOKENS)
    flags = {
        "fold_ln": True,
        "center_writing_weights": not refuses(variant, "center_writing_weights"),
        "center_unembed": True,
        "fold_value_biases": True,
        "refactor_factored_attn_matrices": not refuses(variant, "refactor_factored_attn_matrices"),
    }
    model.process_weights_(**flags)
    with torch.no_grad():
        logits_after = model(TOKENS)
    assert_close(logits_after.log_softmax(-1), logits_before.log_softmax(-1), "logits", label=variant)
    # center_unembed shifts each position's logits by one constant, so the centered logits agree too.
    centered = logits_before - logits_before.mean(-1, keepdim=True)
    assert_close(logits_after, centered, "logits", label=f"{variant}: logits up to a per-position constant")


def test_process_weights_raises_for_a_step_that_is_not_exact():
    model = perturbed("llama")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6))
    before = model(tokens).log_softmax(-1)
    with pytest.warns(UserWarning, match="center_writing_weights=True skipped"):
        model.process_weights_()  # center_writing_weights defaults to True: skipped on RMSNorm, as TL did
    assert torch.equal(model.blocks[0].ln1.w, torch.ones_like(model.blocks[0].ln1.w))  # fold_ln did run
    torch.testing.assert_close(model(tokens).log_softmax(-1), before, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="rotary"):
        perturbed("ln_rotary_gated").process_weights_(refactor_factored_attn_matrices=True)
    with pytest.raises(ValueError, match="grouped-query"):
        perturbed("ln_gqa").process_weights_(refactor_factored_attn_matrices=True)


@pytest.mark.parametrize("variant", ["gpt2", "ln_no_biases", "llama", "qwen_qkv_bias"])
def test_fold_layer_norm_leaves_identity_norms_and_the_same_activations(variant):
    model = perturbed(variant)
    names = ["blocks.1.attn.hook_q", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post", "blocks.0.ln2.hook_scale"]
    names += ["blocks.1.ln1.hook_normalized", "blocks.1.hook_resid_post", "unembed.hook_in"]
    _, before = model.run_with_cache(TOKENS, names_filter=names)
    model.fold_layer_norm()
    norms = [norm for block in model.blocks for norm in (block.ln1, block.ln2)] + [model.ln_final]
    for norm in norms:
        assert torch.equal(norm.w, torch.ones_like(norm.w))
        assert getattr(norm, "b", None) is None or torch.equal(norm.b, torch.zeros_like(norm.b))
    _, after = model.run_with_cache(TOKENS, names_filter=names[:-1])
    for name in names[:-1]:
        assert_close(after[name], before[name], "resid", label=name)
    if VARIANTS[variant].normalization_type == "LN":  # the reading weights are centered over d_model
        for weight in (model.blocks[0].attn.W_Q, model.blocks[1].mlp.W_in, model.unembed.W_U):
            assert weight.mean(-2).abs().max() < 1e-6


def test_fold_layer_norm_without_biases():
    model = perturbed("gpt2")
    before = log_probs(model, TOKENS)
    with pytest.raises(ValueError, match="center_weights=False"):
        model.fold_layer_norm(fold_biases=False)
    model.fold_layer_norm(fold_biases=False, center_weights=False)
    assert torch.equal(model.blocks[0].ln1.w, torch.ones(32))
    assert model.blocks[0].ln1.b.abs().sum() > 0  # the bias stays in the norm
    assert_close(log_probs(model, TOKENS), before, "logits")


def test_center_writing_weights_makes_writers_mean_zero():
    model = perturbed("gpt2")
    model.center_writing_weights()
    block = model.blocks[1]
    writers = {
        "W_E": model.embed.W_E,
        "W_pos": model.pos_embed.W_pos,
        "W_O": block.attn.W_O,
        "b_O": block.attn.b_O,
        "W_out": block.mlp.W_out,
        "b_out": block.mlp.b_out,
    }
    for name, weight in writers.items():
        assert weight.mean(-1).abs().max() < 1e-6, name
    assert model.blocks[0].mlp.W_out.abs().sum() > 0


@pytest.mark.parametrize("step", ["center_unembed", "fold_layer_norm", "center_writing_weights"])
def test_a_step_that_edits_W_U_unties_it_first(step):
    model = perturbed("gpt2_tied")
    W_E = model.embed.W_E.detach().clone()
    W_U = model.unembed.W_U.detach().clone()
    stride = model.unembed.W_U.stride()
    assert model.unembed.W_U.untyped_storage().data_ptr() == model.embed.W_E.untyped_storage().data_ptr()
    getattr(model, step)()
    assert model.unembed.W_U.untyped_storage().data_ptr() != model.embed.W_E.untyped_storage().data_ptr()
    assert model.unembed.W_U.stride() == stride  # the copy keeps lm_head's layout
    assert not model.cfg.tie_word_embeddings
    if step == "center_unembed":
        assert torch.equal(model.embed.W_E, W_E)  # the embedding is untouched
        assert model.unembed.W_U.mean(-1).abs().max() < 1e-6
    if step == "center_writing_weights":
        assert torch.equal(model.unembed.W_U, W_U)  # the unembedding is untouched


def test_fold_value_biases_with_grouped_query_attention():
    model = perturbed("qwen_qkv_bias")
    assert model.blocks[0].attn.b_O is None
    before = log_probs(model, TOKENS)
    model.fold_value_biases()
    for block in model.blocks:
        assert torch.equal(block.attn.b_V, torch.zeros_like(block.attn.b_V))
        assert block.attn.b_O is not None and block.attn.b_O.abs().sum() > 0
    assert model.cfg.attn_out_bias and model.blocks[0].attn.cfg is model.cfg
    assert_close(log_probs(model, TOKENS), before, "logits")


def test_refactor_balances_the_factors_and_keeps_the_products():
    model = perturbed("gpt2")
    attn = model.blocks[1].attn

    def augmented(weight, bias):
        return torch.cat([weight.detach(), bias.detach()[:, None]], dim=1).double()

    qk_before = augmented(attn.W_Q, attn.b_Q) @ augmented(attn.W_K, attn.b_K).transpose(-1, -2)
    ov_before = attn.W_V.detach().double() @ attn.W_O.detach().double()
    model.refactor_factored_attn_matrices()
    queries, keys = augmented(attn.W_Q, attn.b_Q), augmented(attn.W_K, attn.b_K)
    qk_after = queries @ keys.transpose(-1, -2)
    ov_after = attn.W_V.detach().double() @ attn.W_O.detach().double()
    assert torch.allclose(qk_after, qk_before, atol=1e-5)
    assert torch.allclose(ov_after, ov_before, atol=1e-5)
    gram_q, gram_k = queries.transpose(-1, -2) @ queries, keys.transpose(-1, -2) @ keys
    assert torch.allclose(gram_q, gram_k, atol=1e-4)  # both are diag(S)
    assert torch.allclose(gram_q, torch.diag_embed(gram_q.diagonal(dim1=-2, dim2=-1)), atol=1e-4)
    values, out = attn.W_V.detach().double(), attn.W_O.detach().double()
    assert torch.allclose(values.transpose(-1, -2) @ values, out @ out.transpose(-1, -2), atol=1e-4)


def test_processing_keeps_every_parameter_layout():
    model = perturbed("gpt2")
    strides = {name: param.stride() for name, param in model.named_parameters()}
    model.process_weights_(refactor_factored_attn_matrices=True)
    assert {name: param.stride() for name, param in model.named_parameters()} == strides


def test_created_biases_are_in_the_config():
    """After processing a model without biases, its config builds a model with the same parameters."""
    model = perturbed("ln_no_biases")
    model.process_weights_(refactor_factored_attn_matrices=True)
    assert model.blocks[0].attn.b_Q is not None and model.blocks[0].mlp.b_in is not None
    rebuilt = HookedTransformer(model.cfg).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    assert torch.equal(log_probs(rebuilt, TOKENS), log_probs(model, TOKENS))


def test_a_block_it_does_not_know_is_refused():
    model = perturbed("gpt2")
    model.blocks[0].ln1 = torch.nn.LayerNorm(32)
    with pytest.raises(NotImplementedError, match="layer 0's ln1 is a LayerNorm"):
        processing.fold_layer_norm(model)


def test_half_precision_weights_are_processed_in_float32():
    model = perturbed("gpt2")
    reference = log_probs(model, TOKENS)
    model.to(torch.bfloat16)
    model.process_weights_()
    assert all(param.dtype == torch.bfloat16 for param in model.parameters())
    assert_close(log_probs(model, TOKENS), reference, "logits", torch.bfloat16)


# ---- from_pretrained flags ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2_processing")
    hf = save_tiny(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32), folder)
    return folder, hf


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_processing")
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        attention_bias=True,
    )
    return folder, save_tiny(config, folder)


def _same_state(a: HookedTransformer, b: HookedTransformer) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name
    assert a.cfg == b.cfg


def test_from_pretrained_flags_apply_the_steps(gpt2_dir, llama_dir):
    tokens = torch.randint(0, 128, (2, 10))
    cases = [
        (gpt2_dir, dict.fromkeys(FLAGS, True)),
        (llama_dir, dict(fold_ln=True, center_unembed=True, fold_value_biases=True)),
    ]
    for (folder, hf), flags in cases:
        processed = HookedTransformer.from_pretrained(folder, **flags)
        by_hand = HookedTransformer.from_pretrained(folder)
        by_hand.process_weights_(**{flag: flags.get(flag, False) for flag in FLAGS})
        _same_state(processed, by_hand)
        with torch.no_grad():
            reference = hf(tokens).logits.log_softmax(-1)
        assert_close(log_probs(processed, tokens), reference, "logits", label=f"{folder.name} processed vs HF")
        assert torch.equal(processed.blocks[0].ln1.w, torch.ones(64))
    attn = HookedTransformer.from_pretrained(gpt2_dir[0], **dict.fromkeys(FLAGS, True)).blocks[1].attn
    storage = attn.W_Q.untyped_storage().data_ptr()  # GPT-2's fused qkv stays one tensor
    assert attn.W_K.untyped_storage().data_ptr() == storage == attn.W_V.untyped_storage().data_ptr()


def test_from_pretrained_defaults_do_not_process(gpt2_dir):
    model = HookedTransformer.from_pretrained(gpt2_dir[0])
    assert not torch.equal(model.blocks[0].ln1.w, torch.ones(64))
    assert model.cfg.tie_word_embeddings


def test_center_writing_weights_flag_is_skipped_with_a_warning_on_rmsnorm_models(llama_dir):
    """TransformerLens warned and skipped it, so notebooks pass the same flags for every model; the explicit
    step, asked for by itself, still refuses."""
    with pytest.warns(UserWarning, match="center_writing_weights=True skipped"):
        model = HookedTransformer.from_pretrained(llama_dir[0], center_writing_weights=True)
    plain = HookedTransformer.from_pretrained(llama_dir[0])
    for name, param in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], param), name
    with pytest.raises(ValueError, match="center_writing_weights"):
        model.center_writing_weights()

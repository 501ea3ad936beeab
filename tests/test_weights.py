"""Stacked weights (hooked/weights.py): shapes, agreement with the blocks, and with what attention computes."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, tiny_llama, tiny_tokenizer

from hooked import FactoredMatrix, HookedTransformer, HookedTransformerConfig

GPT2_LIKE = HookedTransformerConfig(
    d_model=32, n_layers=3, n_heads=4, d_vocab=128, n_ctx=16, d_mlp=48, unembed_bias=True, initializer_range=0.1
)
LLAMA_LIKE = tiny_llama(n_layers=3, d_vocab=128, n_ctx=16, initializer_range=0.1)
# Grouped-query with q/k/v biases but none on the output or the MLP (Qwen2's mix).
QWEN_LIKE = LLAMA_LIKE.replace(attn_qkv_bias=True)
CONFIGS = {"gpt2": GPT2_LIKE, "llama": LLAMA_LIKE, "qwen": QWEN_LIKE}


def make_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer()).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they matter
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w" or leaf.startswith("b"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return make_model(CONFIGS[request.param])


def test_shapes(model):
    cfg = model.cfg
    L, H, D, Dh, M, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    expected = {
        "W_E": (V, D),
        "W_U": (D, V),
        "b_U": (V,),
        "W_Q": (L, H, D, Dh),
        "W_K": (L, H, D, Dh),
        "W_V": (L, H, D, Dh),
        "W_O": (L, H, Dh, D),
        "b_Q": (L, H, Dh),
        "b_K": (L, H, Dh),
        "b_V": (L, H, Dh),
        "b_O": (L, D),
        "W_in": (L, D, M),
        "W_out": (L, M, D),
        "b_in": (L, M),
        "b_out": (L, D),
    }
    for name, shape in expected.items():
        assert getattr(model, name).shape == shape, name
    assert model.QK.shape == model.OV.shape == (L, H, D, D)
    assert model.blocks[1].attn.QK.shape == model.blocks[1].attn.OV.shape == (H, D, D)
    if cfg.gated_mlp:
        assert model.W_gate.shape == (L, D, M)
    else:
        assert model.W_gate is None
    if cfg.positional_embedding_type == "standard":
        assert model.W_pos.shape == (cfg.n_ctx, D)
    else:
        assert not hasattr(model, "W_pos")


def test_stacking_matches_blocks(model):
    groups = model.cfg.n_key_value_groups
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        assert torch.equal(model.W_Q[i], attn.W_Q) and torch.equal(model.W_O[i], attn.W_O)
        assert torch.equal(model.W_in[i], mlp.W_in) and torch.equal(model.W_out[i], mlp.W_out)
        if model.cfg.gated_mlp:
            assert torch.equal(model.W_gate[i], mlp.W_gate)
        for h in range(model.cfg.n_heads):
            # Query head h reads kv head h // groups (repeat_interleave), never h % n_kv_heads.
            assert torch.equal(model.W_K[i, h], attn.W_K[h // groups])
            assert torch.equal(model.W_V[i, h], attn.W_V[h // groups])
        for stacked, param in [
            (model.b_Q[i], attn.b_Q),
            (model.b_O[i], attn.b_O),
            (model.b_in[i], mlp.b_in),
            (model.b_out[i], mlp.b_out),
        ]:
            assert torch.equal(stacked, param if param is not None else torch.zeros_like(stacked))
        for stacked, param in [(model.b_K[i], attn.b_K), (model.b_V[i], attn.b_V)]:
            expected = param.repeat_interleave(groups, 0) if param is not None else torch.zeros_like(stacked)
            assert torch.equal(stacked, expected)
    assert torch.equal(model.W_E, model.embed.W_E) and torch.equal(model.W_U, model.unembed.W_U)
    b_U = model.unembed.b_U
    assert torch.equal(model.b_U, b_U if b_U is not None else torch.zeros(model.cfg.d_vocab))


def test_expanded_weights_reproduce_attention(model):
    """Per query head, the stacked q/k/v weights give the cached q/k/v, and pattern @ v gives z."""
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6))
    _, cache = model.run_with_cache(tokens)
    groups = model.cfg.n_key_value_groups
    for i, block in enumerate(model.blocks):
        ln1 = block.ln1
        x = cache["normalized", i, "ln1"] * ln1.w + (ln1.b if getattr(ln1, "b", None) is not None else 0)
        for h in range(model.cfg.n_heads):
            q = x @ model.W_Q[i, h] + model.b_Q[i, h]
            k = x @ model.W_K[i, h] + model.b_K[i, h]
            v = x @ model.W_V[i, h] + model.b_V[i, h]
            assert_close(q, cache["q", i][:, :, h], "resid", label=f"q L{i}H{h}")
            assert_close(k, cache["k", i][:, :, h // groups], "resid", label=f"k L{i}H{h}")
            assert_close(v, cache["v", i][:, :, h // groups], "resid", label=f"v L{i}H{h}")
            assert_close(cache["pattern", i][:, h] @ v, cache["z", i][:, :, h], "resid", label=f"z L{i}H{h}")
            assert_close(cache["z", i][:, :, h] @ model.W_O[i, h], cache["result", i][:, :, h], "resid")


def test_qk_and_ov_are_the_products(model):
    assert isinstance(model.QK, FactoredMatrix) and isinstance(model.OV, FactoredMatrix)
    assert_close(model.QK.AB, model.W_Q @ model.W_K.transpose(-1, -2), "resid")
    assert_close(model.OV.AB, model.W_V @ model.W_O, "resid")
    for i, block in enumerate(model.blocks):
        assert_close(block.attn.QK.AB, model.QK.AB[i], "resid")
        assert_close(block.attn.OV.AB, model.OV.AB[i], "resid")


def test_qk_gives_the_attention_scores():
    """Without biases or rotary, scores[q, k] = x_q QK x_k^T / attn_scale (grouped-query included)."""
    cfg = LLAMA_LIKE.replace(positional_embedding_type="standard", rotary_dim=0)
    model = make_model(cfg)
    _, cache = model.run_with_cache(torch.randint(0, cfg.d_vocab, (2, 6)))
    for i, block in enumerate(model.blocks):
        x = cache["normalized", i, "ln1"] * block.ln1.w  # [batch, pos, d_model]
        scores = torch.einsum("bqm,nmr,bkr->bnqk", x, model.QK.AB[i], x) / cfg.attn_scale
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        assert_close(scores[..., causal], cache["attn_scores", i][..., causal], "resid", label=f"scores {i}")


def test_accumulated_bias():
    # With every matrix that writes to the residual zeroed, the residual holds only the biases.
    model = make_model(GPT2_LIKE)
    n_layers = model.cfg.n_layers
    with torch.no_grad():
        for param in [model.embed.W_E, model.pos_embed.W_pos, *(b.attn.W_O for b in model.blocks)]:
            param.zero_()
        for block in model.blocks:
            block.mlp.W_out.zero_()
    _, cache = model.run_with_cache(torch.randint(0, 128, (1, 4)))
    for layer in range(n_layers):
        assert_close(model.accumulated_bias(layer).expand(1, 4, -1), cache["resid_pre", layer], "resid")
        assert_close(model.accumulated_bias(layer, mlp_input=True).expand(1, 4, -1), cache["resid_mid", layer], "resid")
    final = model.accumulated_bias(n_layers).expand(1, 4, -1)
    assert_close(final, cache["resid_post", n_layers - 1], "resid")

    hand = sum(model.blocks[l].attn.b_O for l in range(2)) + model.blocks[2].attn.b_O
    assert_close(model.accumulated_bias(2, mlp_input=True, include_mlp_biases=False), hand, "resid")
    assert torch.equal(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    with pytest.raises(ValueError, match="layer must be in"):
        model.accumulated_bias(n_layers + 1)
    with pytest.raises(ValueError, match="mlp_input"):
        model.accumulated_bias(n_layers, mlp_input=True)


def test_accumulated_bias_without_biases_is_zero():
    model = make_model(LLAMA_LIKE)
    assert torch.equal(model.accumulated_bias(3, include_mlp_biases=True), torch.zeros(32))


def test_all_head_labels(model):
    labels = model.all_head_labels()
    assert len(labels) == model.cfg.n_layers * model.cfg.n_heads
    assert labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"] and labels[-1] == "L2H3"


def test_tokens_to_residual_directions(model):
    W_U = model.unembed.W_U * model.ln_final.w[:, None]  # what each logit reads from the normalized residual
    assert torch.equal(model.tokens_to_residual_directions(5), W_U[:, 5])
    assert torch.equal(model.tokens_to_residual_directions(torch.tensor(7)), W_U[:, 7])
    cat = model.to_single_token(" cat")
    assert torch.equal(model.tokens_to_residual_directions(" cat"), W_U[:, cat])
    listed = model.tokens_to_residual_directions([3, " cat"])
    assert listed.shape == (2, 32) and torch.equal(listed[1], W_U[:, cat])
    grid = torch.tensor([[1, 2, 3], [4, 5, 6]])
    directions = model.tokens_to_residual_directions(grid)
    assert directions.shape == (2, 3, 32) and torch.equal(directions[1, 2], W_U[:, 6])
    with pytest.raises(ValueError, match="not one"):
        model.tokens_to_residual_directions(" cat sat")


def test_direct_logit_attribution_the_tutorial_way_needs_no_folding(model):
    """ARENA's recipe: apply_ln_to_stack on the decomposition, dotted with tokens_to_residual_directions,
    sums to the logit difference, on the model as loaded and after fold_ln alike (same directions)."""
    from hooked.processing import fold_layer_norm

    tokens = torch.randint(0, 128, (1, 8))
    a, b = 5, 9
    for _ in range(2):
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        stack = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=-1)
        scaled = cache.apply_ln_to_stack(stack, pos_slice=-1)
        direction = model.tokens_to_residual_directions(a) - model.tokens_to_residual_directions(b)
        constant = 0.0  # the final norm's bias and b_U: the same for every component
        if getattr(model.ln_final, "b", None) is not None:
            constant = model.ln_final.b @ (model.W_U[:, a] - model.W_U[:, b])
        if model.unembed.b_U is not None:
            constant = constant + model.unembed.b_U[a] - model.unembed.b_U[b]
        total = (scaled @ direction).sum() + constant
        assert abs(total.item() - (logits[0, -1, a] - logits[0, -1, b]).item()) < 1e-4
        fold_layer_norm(model)


def test_w_e_pos_stacks_token_and_position_embeddings():
    model = make_model(GPT2_LIKE)
    assert torch.equal(model.W_E_pos, torch.cat([model.W_E, model.W_pos]))
    assert model.W_E_pos.shape == (128 + 16, 32)
    with pytest.raises(AttributeError):
        make_model(LLAMA_LIKE).W_E_pos  # rotary: no learned positions

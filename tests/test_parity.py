"""Our numbers against the Hugging Face reference, family by family and variant by variant."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_matches_reference, reference, rope_kwargs, save_tiny
from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from hooked import HookedTransformer

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    vocab_size=97,
    max_position_embeddings=64,
)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

VARIANTS = {
    "gpt2": lambda: GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=97, n_positions=32),
    "gpt2-untied-relu": lambda: GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=2,
        vocab_size=97,
        n_positions=32,
        tie_word_embeddings=False,
        activation_function="relu",
        n_inner=80,
    ),
    "gpt2-unscaled-gelu": lambda: GPT2Config(
        n_embd=48,
        n_layer=2,
        n_head=3,
        vocab_size=97,
        n_positions=32,
        scale_attn_weights=False,
        activation_function="gelu",
    ),
    # Stanford CRFM's GPT-2s: layer i's scores also divided by i + 1, and computed in float32 (reordered).
    "gpt2-inverse-layer-scale": lambda: GPT2Config(
        n_embd=64, n_layer=4, n_head=4, vocab_size=97, n_positions=32, scale_attn_by_inverse_layer_idx=True
    ),
    "gpt2-upcast-reordered": lambda: GPT2Config(
        n_embd=64,
        n_layer=3,
        n_head=4,
        vocab_size=97,
        n_positions=32,
        scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True,
    ),
    "llama-mha": lambda: LlamaConfig(**SMALL, num_key_value_heads=4),
    "llama-gqa": lambda: LlamaConfig(**SMALL, num_key_value_heads=2),
    "llama-mqa-tied": lambda: LlamaConfig(**SMALL, num_key_value_heads=1, tie_word_embeddings=True),
    "llama-biases": lambda: LlamaConfig(**SMALL, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
    "llama-head-dim": lambda: LlamaConfig(**SMALL, num_key_value_heads=2, head_dim=24),
    "llama-rope-linear": lambda: LlamaConfig(
        **SMALL, num_key_value_heads=2, **rope_kwargs(500.0, {"rope_type": "linear", "factor": 4.0})
    ),
    "llama-rope-llama3": lambda: LlamaConfig(**SMALL, num_key_value_heads=2, **rope_kwargs(10000.0, LLAMA3_SCALING)),
    "llama-gelu": lambda: LlamaConfig(**SMALL, hidden_act="gelu_pytorch_tanh"),
    "mistral-sliding": lambda: MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=4),
    "mistral-no-window": lambda: MistralConfig(**SMALL, num_key_value_heads=1, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**SMALL, num_key_value_heads=2),
    "qwen2-tied": lambda: Qwen2Config(**SMALL, num_key_value_heads=4, tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(VARIANTS[request.param](), folder)
    return hf, HookedTransformer.from_pretrained(folder)


def test_logits_residuals_and_patterns_match(pair):
    hf, model = pair
    assert_matches_reference(model, hf, torch.randint(0, 97, (2, 12)))


def test_unhooked_sdpa_path_matches_reference(pair):
    hf, model = pair
    tokens = torch.randint(0, 97, (3, 10))
    with torch.no_grad():
        assert_close(model(tokens), reference(hf, tokens).logits, "logits")


def test_padded_batch_matches_reference_with_positions(pair):
    """Left padding: we derive positions from the mask; HF is given the same positions explicitly."""
    hf, model = pair
    tokens = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = reference(hf, tokens, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
    assert_close(logits[mask.bool()], ref.logits[mask.bool()], "logits")


def test_loss_matches_reference(pair):
    hf, model = pair
    tokens = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        ref_loss = hf(tokens, labels=tokens).loss
        loss = model(tokens, return_type="loss")
    assert_close(loss, ref_loss, "logits")

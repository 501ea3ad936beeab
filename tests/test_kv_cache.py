"""Decoding with the key-value cache gives the numbers of running the whole sequence."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from hooked import HookedTransformer, HookedTransformerConfig
from hooked.components.kv_cache import KVCache

CONFIGS = {
    "rotary-gqa": HookedTransformerConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_key_value_heads=2,
        d_vocab=50,
        n_ctx=64,
        d_mlp=48,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
    ),
    "learned-positions": HookedTransformerConfig(d_model=32, n_layers=2, n_heads=4, d_vocab=50, n_ctx=64),
    "sliding-window": HookedTransformerConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_vocab=50,
        n_ctx=64,
        positional_embedding_type="rotary",
        normalization_type="RMS",
        sliding_window=5,
    ),
}


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    return HookedTransformer(CONFIGS[request.param]).eval()


@pytest.mark.parametrize("chunks", [[6, 1, 1, 1], [3, 4, 2]])
def test_chunked_decoding_matches_full_forward(model, chunks):
    tokens = torch.randint(0, 50, (2, sum(chunks)))
    full = model(tokens)
    cache = KVCache.for_model(model)
    start, pieces = 0, []
    for size in chunks:
        pieces.append(model(tokens[:, start : start + size], past_kv_cache=cache))
        start += size
    assert len(cache) == tokens.shape[1]
    assert_close(torch.cat(pieces, dim=1), full, "logits")


def test_left_padded_rows_decode_as_if_alone(model):
    """Greedy decoding of a left-padded batch, with the cache, equals each row decoded alone without it."""
    rows = [torch.randint(0, 50, (7,)), torch.randint(0, 50, (4,))]
    width = max(len(r) for r in rows)
    tokens = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :], mask[i, width - len(row) :] = row, 1

    cache = KVCache.for_model(model)
    logits = model(tokens, attention_mask=mask, past_kv_cache=cache)
    batch_steps = [logits[:, -1]]
    for _ in range(5):
        next_tokens = batch_steps[-1].argmax(-1, keepdim=True)
        batch_steps.append(model(next_tokens, attention_mask=torch.ones_like(next_tokens), past_kv_cache=cache)[:, -1])

    for i, row in enumerate(rows):
        sequence = row[None]
        for step in range(6):
            alone = model(sequence)[:, -1]  # no cache, no padding
            assert_close(batch_steps[step][i], alone[0], "logits", label=f"row {i} step {step}")
            sequence = torch.cat([sequence, alone.argmax(-1, keepdim=True)], dim=1)


def test_cache_grows_without_copying_each_step():
    model = HookedTransformer(CONFIGS["learned-positions"]).eval()
    cache = KVCache.for_model(model)
    model(torch.randint(0, 50, (1, 3)), past_kv_cache=cache)
    buffers = [cache.layers[0].keys.data_ptr()]
    for _ in range(10):
        model(torch.randint(0, 50, (1, 1)), past_kv_cache=cache)
        buffers.append(cache.layers[0].keys.data_ptr())
    assert len(set(buffers)) <= 2  # one reallocation (doubling) at most over 13 tokens from a capacity of 16


def test_cache_misuse_is_an_error(model):
    cache = KVCache.for_model(model)
    model(torch.randint(0, 50, (2, 3)), past_kv_cache=cache)
    with pytest.raises(ValueError, match="batch of 2"):
        model(torch.randint(0, 50, (3, 1)), past_kv_cache=cache)
    with pytest.raises(ValueError, match="n_ctx=64"):
        model(torch.randint(0, 50, (2, 62)), past_kv_cache=cache)


def test_a_forward_that_raises_leaves_the_cache_as_it_was():
    model = HookedTransformer(CONFIGS["rotary-gqa"]).eval()
    tokens = torch.randint(0, 50, (1, 8))
    cache = KVCache.for_model(model)
    model(tokens[:, :5], past_kv_cache=cache)

    def fail_in_last_layer(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(
            tokens[:, 5:6], past_kv_cache=cache, fwd_hooks=[("blocks.1.hook_resid_post", fail_in_last_layer)]
        )
    assert len(cache) == 5 and all(layer.length == 5 for layer in cache.layers)
    rest = model(tokens[:, 5:], past_kv_cache=cache)
    assert_close(rest, model(tokens)[:, 5:], "logits")

"""Ablation hooks: zero equals a hand-written hook, mean uses the exact mean, resample draws reference rows."""

from __future__ import annotations

import pytest
import torch

from hooked import HookedTransformer, HookedTransformerConfig, ablation

CFG = HookedTransformerConfig(
    d_model=32, n_layers=2, n_heads=4, n_key_value_heads=2, d_vocab=64, n_ctx=32, d_mlp=40, initializer_range=0.2
)


@pytest.fixture
def model():
    torch.manual_seed(3)
    return HookedTransformer(CFG).eval()


@pytest.fixture
def tokens():
    torch.manual_seed(4)
    return torch.randint(0, CFG.d_vocab, (3, 7))


@pytest.fixture
def reference(model):
    torch.manual_seed(5)
    reference_tokens = torch.randint(0, CFG.d_vocab, (5, 7))
    _, cache = model.run_with_cache(reference_tokens)
    return cache


def run_with_cache(model, tokens, hooks):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model.run_with_cache(tokens)


def test_zero_ablating_heads_equals_a_hand_written_hook(model, tokens):
    def by_hand(z, hook):
        z = z.clone()
        z[:, :, [1, 3]] = 0.0
        return z

    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", by_hand)])
    actual = model.run_with_hooks(tokens, fwd_hooks=ablation.zero_ablate_heads([(1, 3), (1, 1)]))
    assert torch.equal(actual, expected)
    assert not torch.equal(actual, model(tokens))


def test_zero_ablating_neurons_and_layers(model, tokens):
    hooks = ablation.zero_ablate_neurons([(0, 5), (1, 7)]) + ablation.zero_ablate_layers([1], "attn_out")
    _, cache = run_with_cache(model, tokens, hooks)
    assert (cache["post", 0][:, :, 5] == 0).all() and (cache["post", 1][:, :, 7] == 0).all()
    assert (cache["post", 0][:, :, 4] != 0).any()
    assert (cache["attn_out", 1] == 0).all()
    torch.testing.assert_close(cache["resid_mid", 1], cache["resid_pre", 1], atol=0, rtol=0)


def test_mean_ablation_uses_the_reference_mean(model, tokens, reference):
    hooks = ablation.mean_ablate_heads([(0, 2)], reference) + ablation.mean_ablate_neurons([(1, 3)], reference)
    hooks += ablation.mean_ablate_layers([0], "mlp_out", reference, over_positions=True)
    _, cache = run_with_cache(model, tokens, hooks)
    head_mean = reference["z", 0][:, :, 2].mean(0)  # [pos, d_head]
    torch.testing.assert_close(cache["z", 0][:, :, 2], head_mean.expand(3, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(cache["post", 1][:, :, 3], reference["post", 1][:, :, 3].mean(0).expand(3, -1))
    layer_mean = reference["mlp_out", 0].mean((0, 1))  # [d_model]
    torch.testing.assert_close(cache["mlp_out", 0], layer_mean.expand(3, 7, -1), atol=0, rtol=0)
    untouched = [h for h in range(CFG.n_heads) if h != 2]
    _, clean = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["z", 0][:, :, untouched], clean["z", 0][:, :, untouched], atol=0, rtol=0)


def test_resample_ablation_draws_reference_rows(model, tokens, reference):
    generator = torch.Generator().manual_seed(0)
    heads = [(1, 0), (1, 2)]
    hooks = ablation.resample_ablate_heads(heads, reference, generator)
    hooks += ablation.resample_ablate_layers([0], "attn_out", reference, generator)
    _, cache = run_with_cache(model, tokens, hooks)
    drawn = set()
    for _, head in heads:
        for row in range(tokens.shape[0]):
            matches = [r for r in range(5) if torch.equal(cache["z", 1][row, :, head], reference["z", 1][r, :, head])]
            assert matches, f"row {row} head {head} is no reference row"
            drawn.add(matches[0])
    assert len(drawn) > 1  # the draws vary
    for row in range(tokens.shape[0]):
        assert any(torch.equal(cache["attn_out", 0][row], reference["attn_out", 0][r]) for r in range(5))


def test_resample_is_reproducible_with_a_seeded_generator(model, tokens, reference):
    runs = [
        model.run_with_hooks(
            tokens,
            fwd_hooks=ablation.resample_ablate_neurons([(0, 1), (0, 9)], reference, torch.Generator().manual_seed(7)),
        )
        for _ in range(2)
    ]
    assert torch.equal(*runs)


def test_ablating_nothing_changes_nothing(model, tokens):
    baseline = model(tokens)
    for hooks in (
        ablation.zero_ablate_heads([]),
        ablation.zero_ablate_neurons([]),
        ablation.zero_ablate_layers([], "mlp_out"),
    ):
        assert hooks == []
        assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=hooks), baseline)
    # Mean and resample ablation against the run itself, one row: the replacement is the value itself.
    one = tokens[:1]
    # (Cache only these: a pattern hook would switch attention to the eager path, which rounds differently.)
    _, own = model.run_with_cache(one, names_filter=lambda name: name.endswith(("hook_z", "hook_mlp_out")))
    hooks = ablation.mean_ablate_heads([(0, 0), (1, 3)], own) + ablation.resample_ablate_layers([1], "mlp_out", own)
    assert torch.equal(model.run_with_hooks(one, fwd_hooks=hooks), model(one))


def test_errors_name_the_problem(model, tokens, reference):
    with pytest.raises(IndexError, match="hook_z"):
        model.run_with_hooks(tokens, fwd_hooks=ablation.zero_ablate_heads([(0, 4)]))
    with pytest.raises(ValueError, match="over_positions"):
        model.run_with_hooks(tokens[:, :5], fwd_hooks=ablation.mean_ablate_heads([(0, 0)], reference))
    with pytest.raises(KeyError, match="names_filter"):
        model.run_with_hooks(tokens, fwd_hooks=ablation.mean_ablate_heads([(0, 0)], {}))
    with pytest.raises(ValueError, match="component"):
        ablation.zero_ablate_layers([0], "resid_pre")

"""Attribution patching: exact where the metric is linear, and ranks heads like real activation patching."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from hooked import HookedTransformer, HookedTransformerConfig, patching
from hooked.analysis.attribution import attribute_block_every, attribute_heads, attribute_resid, attribution_patch

GPT2_LIKE = HookedTransformerConfig(d_model=32, n_layers=3, n_heads=4, d_vocab=64, n_ctx=32, initializer_range=0.1)
LLAMA_LIKE = tiny_llama(n_layers=3, d_vocab=64, n_ctx=32, initializer_range=0.1)
ANSWER, WRONG = 5, 6


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    torch.manual_seed(0)
    return HookedTransformer(GPT2_LIKE if request.param == "gpt2" else LLAMA_LIKE).eval()


@pytest.fixture
def prompts():
    """Clean and corrupted batches (2 x 6) that differ at position 2."""
    torch.manual_seed(2)
    clean = torch.randint(0, 64, (2, 6))
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 7) % 64
    return clean, corrupted


def logit_diff(logits):
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation: Pearson correlation of the ranks (argsort of argsort; no ties here)."""
    ranks = [x.flatten().argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return ((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm())).item()


def test_exact_where_the_metric_is_linear(model, prompts):
    """Logits are affine in unembed.hook_in, so the logit difference is linear in it: patching any set of
    its entries changes the metric by exactly the summed attribution."""
    clean, corrupted = prompts
    attributions = attribution_patch(model, clean, corrupted, logit_diff, "unembed.hook_in")
    attribution = attributions["unembed.hook_in"]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter="unembed.hook_in")
        corrupted_value = logit_diff(model(corrupted)).item()
        for pos in range(clean.shape[1]):

            def patch(activation, hook, pos=pos):
                activation = activation.clone()
                activation[:, pos] = clean_cache["unembed.hook_in"][:, pos]
                return activation

            patched = logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[("unembed.hook_in", patch)])).item()
            estimate = attribution[:, pos].sum().item()
            assert estimate == pytest.approx(patched - corrupted_value, abs=1e-5)
        # Everything at once: the corrupted run becomes the clean run at the unembedding.
        assert attribution.sum().item() == pytest.approx(logit_diff(model(clean)).item() - corrupted_value, abs=1e-5)
    assert attribution[:, -1].abs().sum() > 1e-3  # the last position carries the whole difference
    assert attribution[:, :-1].abs().sum() == 0


def test_heads_rank_like_activation_patching(model, prompts):
    clean, corrupted = prompts
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda name: name.endswith("hook_z"))
        corrupted_value = logit_diff(model(corrupted)).item()
    actual = patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted, clean_cache, lambda logits: logit_diff(logits) - corrupted_value
    )
    estimate = attribute_heads(model, clean, corrupted, logit_diff)
    assert estimate.shape == actual.shape == (3, 4)
    assert spearman(estimate, actual) > 0.7
    by_pos = attribute_heads(model, clean, corrupted, logit_diff, per_position=True)
    assert by_pos.shape == (3, 6, 4)
    torch.testing.assert_close(by_pos.sum(1), estimate, atol=1e-6, rtol=1e-5)
    assert (by_pos[:, :2] == 0).all()  # before the changed position nothing differs


def test_resid_and_block_estimates(model, prompts):
    clean, corrupted = prompts
    resid = attribute_resid(model, clean, corrupted, logit_diff)
    assert resid.shape == (3, 6)
    assert (resid[0, [0, 1, 3, 4, 5]] == 0).all() and resid[0, 2] != 0  # layer 0 differs at position 2 only
    block = attribute_block_every(model, clean, corrupted, logit_diff)
    assert block.shape == (3, 3, 6)
    torch.testing.assert_close(block[0], resid, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(block[2], attribute_resid(model, clean, corrupted, logit_diff, "mlp_out"))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda name: name.endswith("resid_pre"))
        corrupted_value = logit_diff(model(corrupted)).item()
    actual = patching.get_act_patch_resid_pre(
        model, corrupted, clean_cache, lambda logits: logit_diff(logits) - corrupted_value
    )
    assert spearman(resid[:, 2:], actual[:, 2:]) > 0.7


def test_every_hook_point_at_once_and_per_head_results(model, prompts):
    """With hooks everywhere the gradients are unchanged, and hook_result's gradient is real: result is
    z @ W_O per head, so its attribution summed per head equals z's (a fused shortcut would give 0)."""
    clean, corrupted = prompts
    everything = attribution_patch(model, clean, corrupted, logit_diff)
    only_z = attribution_patch(model, clean, corrupted, logit_diff, lambda name: name.endswith("hook_z"))
    for layer in range(3):
        torch.testing.assert_close(everything["z", layer], only_z["z", layer], atol=1e-6, rtol=1e-5)
        per_head_result = everything["result", layer].sum((0, 1, 3))
        torch.testing.assert_close(per_head_result, only_z["z", layer].sum((0, 1, 3)), atol=1e-5, rtol=1e-4)
    assert torch.isfinite(everything["attn_scores", 0]).all()  # masked -inf entries give 0, not nan
    assert "hook_tokens" not in everything


def test_per_head_inputs_by_name(model, prompts):
    clean, corrupted = prompts
    inputs = attribution_patch(model, clean, corrupted, logit_diff, lambda name: name.endswith("hook_q_input"))
    assert inputs["blocks.1.hook_q_input"].shape == (2, 6, 4, 32)
    assert inputs["blocks.1.hook_q_input"][:, -1].abs().sum() > 0  # the gradient reaches the per-head copies
    with pytest.raises(ValueError, match="more than once"):
        attribution_patch(model, clean, corrupted, logit_diff, ["blocks.0.hook_q_input", "blocks.0.ln1.hook_scale"])


def test_no_parameter_gradients_and_works_under_no_grad(model, prompts):
    clean, corrupted = prompts
    with torch.no_grad():
        estimate = attribute_heads(model, clean, corrupted, logit_diff)
    assert estimate.abs().sum() > 0
    assert all(param.grad is None for param in model.parameters())
    assert not model.hook_dict["blocks.0.attn.hook_z"].has_hooks


def test_bad_arguments(model, prompts):
    clean, corrupted = prompts
    with pytest.raises(ValueError, match="same shape"):
        attribution_patch(model, clean, corrupted[:, :5], logit_diff)
    with pytest.raises(ValueError, match="scalar"):
        attribution_patch(model, clean, corrupted, lambda logits: logits[:, -1, 0], "unembed.hook_in")
    with pytest.raises(ValueError, match="component"):
        attribute_resid(model, clean, corrupted, logit_diff, "z")

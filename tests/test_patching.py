"""Activation patching: exact invariants, batched passes equal one pass per patch, every helper's shape."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from hooked import HookedTransformer, HookedTransformerConfig, patching
from hooked.utils import get_act_name

GPT2_LIKE = HookedTransformerConfig(d_model=32, n_layers=2, n_heads=4, d_vocab=64, n_ctx=32, initializer_range=0.2)
LLAMA_LIKE = tiny_llama(n_layers=2, d_vocab=64, n_ctx=32, initializer_range=0.2)
ANSWER, WRONG = 5, 6
CHANGED_POS = 2


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    cfg = GPT2_LIKE if request.param == "gpt2" else LLAMA_LIKE
    torch.manual_seed(1)
    return HookedTransformer(cfg).eval()


def logit_diff(logits):
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()


@pytest.fixture
def setup(model):
    """Two corrupted/clean batches of 2 rows x 6 tokens that differ only at CHANGED_POS, and a metric that
    is 0 on the corrupted run and 1 on the clean one."""
    torch.manual_seed(2)
    clean = torch.randint(0, model.cfg.d_vocab, (2, 6))
    corrupted = clean.clone()
    corrupted[:, CHANGED_POS] = (clean[:, CHANGED_POS] + 7) % model.cfg.d_vocab
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        clean_diff, corrupted_diff = logit_diff(model(clean)).item(), logit_diff(model(corrupted)).item()
    assert abs(clean_diff - corrupted_diff) > 0.05, "the test prompts must change the metric"

    def recovered(logits):
        return (logit_diff(logits) - corrupted_diff) / (clean_diff - corrupted_diff)

    return model, clean, corrupted, clean_cache, recovered


def sequential(model, corrupted, clean_cache, metric, setter, activation_name, axes):
    """The plain definition: one full forward per patch, on a clone of the activation."""
    sizes = [patching._axis_size(model, axis, corrupted.shape[1], activation_name) for axis in axes]
    out = torch.zeros(sizes)
    for index in torch.cartesian_prod(*(torch.arange(s) for s in sizes)).reshape(-1, len(sizes)).tolist():
        name = get_act_name(activation_name, index[0])

        def hook(activation, hook, index=index, name=name):
            return setter(activation.clone(), index, clean_cache[name])

        with torch.no_grad():
            out[tuple(index)] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).item()
    return out


CASES = [
    ("resid_pre", ("layer", "pos"), patching.layer_pos_patch_setter, patching.get_act_patch_resid_pre),
    ("mlp_out", ("layer", "pos"), patching.layer_pos_patch_setter, patching.get_act_patch_mlp_out),
    (
        "z",
        ("layer", "pos", "head_index"),
        patching.layer_pos_head_vector_patch_setter,
        patching.get_act_patch_attn_head_out_by_pos,
    ),
    ("k", ("layer", "head_index"), patching.layer_head_vector_patch_setter, patching.get_act_patch_attn_head_k_all_pos),
    (
        "v",
        ("layer", "pos", "head_index"),
        patching.layer_pos_head_vector_patch_setter,
        patching.get_act_patch_attn_head_v_by_pos,
    ),
    (
        "pattern",
        ("layer", "head_index", "dest_pos", "src_pos"),
        patching.layer_head_dest_src_pos_pattern_patch_setter,
        patching.get_act_patch_attn_head_pattern_dest_src_pos,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batched_equals_one_pass_per_patch(setup, case):
    model, _, corrupted, clean_cache, metric = setup
    activation_name, axes, setter, helper = case
    expected = sequential(model, corrupted, clean_cache, metric, setter, activation_name, axes)
    assert expected.abs().max() > 0.05  # something was actually patched
    for patches_per_forward in (None, 5, 1):  # default (all in one pass here), uneven chunks, one per pass
        actual = helper(model, corrupted, clean_cache, metric, patches_per_forward=patches_per_forward)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0, msg=f"{patches_per_forward=}")


def test_final_residual_at_last_position_recovers_exactly_one(setup):
    model, _, corrupted, clean_cache, metric = setup
    last = model.cfg.n_layers - 1
    results = patching.generic_activation_patch(
        model, corrupted, clean_cache, metric, patching.layer_pos_patch_setter, "resid_post", ("layer", "pos")
    )
    assert results[last, -1].item() == pytest.approx(1.0, abs=1e-5)
    # The metric reads the last position only, and later layers do not mix positions after the last block.
    torch.testing.assert_close(results[last, :-1], torch.zeros(corrupted.shape[1] - 1), atol=1e-5, rtol=0)


def test_one_token_difference_is_all_at_that_position(setup):
    model, _, corrupted, clean_cache, metric = setup
    results = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    expected = torch.zeros(corrupted.shape[1])
    expected[CHANGED_POS] = 1.0
    torch.testing.assert_close(results[0], expected, atol=1e-5, rtol=0)


def test_patching_the_corrupted_run_into_itself_changes_nothing(setup):
    model, _, corrupted, _, metric = setup
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(corrupted)
    for helper in (
        patching.get_act_patch_block_every,
        patching.get_act_patch_resid_mid,
        patching.get_act_patch_attn_head_all_pos_every,
        patching.get_act_patch_attn_head_by_pos_every,
        patching.get_act_patch_attn_head_pattern_dest_src_pos,
    ):
        results = helper(model, corrupted, corrupted_cache, metric)
        torch.testing.assert_close(results, torch.zeros_like(results), atol=1e-5, rtol=0, msg=helper.__name__)


def test_shapes_of_every_helper(setup):
    model, _, corrupted, clean_cache, metric = setup
    L, H, Hkv, P = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads, corrupted.shape[1]
    expected = {
        patching.get_act_patch_resid_pre: (L, P),
        patching.get_act_patch_resid_mid: (L, P),
        patching.get_act_patch_attn_out: (L, P),
        patching.get_act_patch_mlp_out: (L, P),
        patching.get_act_patch_attn_head_out_all_pos: (L, H),
        patching.get_act_patch_attn_head_q_all_pos: (L, H),
        patching.get_act_patch_attn_head_k_all_pos: (L, Hkv),
        patching.get_act_patch_attn_head_v_all_pos: (L, Hkv),
        patching.get_act_patch_attn_head_pattern_all_pos: (L, H),
        patching.get_act_patch_attn_head_out_by_pos: (L, P, H),
        patching.get_act_patch_attn_head_q_by_pos: (L, P, H),
        patching.get_act_patch_attn_head_k_by_pos: (L, P, Hkv),
        patching.get_act_patch_attn_head_v_by_pos: (L, P, Hkv),
        patching.get_act_patch_attn_head_pattern_by_pos: (L, H, P),
        patching.get_act_patch_attn_head_pattern_dest_src_pos: (L, H, P, P),
        patching.get_act_patch_block_every: (3, L, P),
        patching.get_act_patch_attn_head_all_pos_every: (5, L, H),
        patching.get_act_patch_attn_head_by_pos_every: (5, L, P, H),
    }
    for helper, shape in expected.items():
        assert helper(model, corrupted, clean_cache, metric).shape == shape, helper.__name__


def test_every_variants_stack_the_single_helpers(setup):
    model, _, corrupted, clean_cache, metric = setup
    args = (model, corrupted, clean_cache, metric)
    groups = model.cfg.n_key_value_groups
    every = patching.get_act_patch_attn_head_all_pos_every(*args)
    torch.testing.assert_close(every[0], patching.get_act_patch_attn_head_out_all_pos(*args))
    k = patching.get_act_patch_attn_head_k_all_pos(*args)
    torch.testing.assert_close(every[2], k.repeat_interleave(groups, dim=-1))
    by_pos = patching.get_act_patch_attn_head_by_pos_every(*args)
    torch.testing.assert_close(by_pos[4], patching.get_act_patch_attn_head_pattern_by_pos(*args).transpose(1, 2))
    block = patching.get_act_patch_block_every(*args)
    torch.testing.assert_close(block[2], patching.get_act_patch_mlp_out(*args))


def test_index_df_rows_and_return_index_df(setup):
    model, _, corrupted, clean_cache, metric = setup
    grid, rows = patching.generic_activation_patch(
        model,
        corrupted,
        clean_cache,
        metric,
        patching.layer_pos_head_vector_patch_setter,
        "z",
        index_axis_names=("layer", "pos", "head_index"),
        return_index_df=True,
    )
    assert rows.shape == (grid.numel(), 3)
    chosen = [[1, 5, 3], [0, CHANGED_POS, 1], [1, 0, 0]]
    flat = patching.generic_activation_patch(
        model, corrupted, clean_cache, metric, patching.layer_pos_head_vector_patch_setter, "z", index_df=chosen
    )
    torch.testing.assert_close(flat, torch.stack([grid[tuple(row)] for row in chosen]), atol=1e-5, rtol=0)


def test_metric_sees_the_corrupted_batch_shape(setup):
    model, _, corrupted, clean_cache, metric = setup
    seen = set()

    def recording_metric(logits):
        seen.add(tuple(logits.shape))
        return metric(logits)

    patching.get_act_patch_attn_out(model, corrupted, clean_cache, recording_metric, patches_per_forward=4)
    assert seen == {(*corrupted.shape, model.cfg.d_vocab)}


def test_errors_name_the_problem(setup):
    model, _, corrupted, clean_cache, metric = setup
    with pytest.raises(ValueError, match="index_axis_names"):
        patching.generic_activation_patch(
            model, corrupted, clean_cache, metric, patching.layer_pos_patch_setter, "resid_pre"
        )
    with pytest.raises(ValueError, match="scalar"):
        patching.get_act_patch_resid_pre(model, corrupted, clean_cache, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="remove_batch_dim"):
        patching.get_act_patch_resid_pre(model, corrupted[:1], clean_cache, metric)

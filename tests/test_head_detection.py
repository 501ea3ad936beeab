"""Head detection: heads given exact patterns by construction score 1.0; the rest score lower."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_tokenizer

from hooked import HookedTransformer, HookedTransformerConfig, detect_head
from hooked.analysis.head_detection import (
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

CFG = HookedTransformerConfig(d_model=32, n_layers=2, n_heads=4, d_vocab=64, n_ctx=32, initializer_range=0.2)
BOS = 0
# BOS, then 6 distinct tokens, then the same 6 again: a repeated random sequence as in induction studies.
HALF = torch.tensor([11, 23, 5, 42, 37, 19])
TOKENS = torch.cat([torch.tensor([BOS]), HALF, HALF])[None]  # [1, 13]
P = TOKENS.shape[1]


@pytest.fixture
def model():
    torch.manual_seed(6)
    return HookedTransformer(CFG).eval()


def rows_or_bos(detection: torch.Tensor) -> torch.Tensor:
    """A valid attention pattern: each query's row of `detection`, or all on BOS where that row is empty."""
    pattern = detection.clone()
    pattern[pattern.sum(-1) == 0, 0] = 1.0
    return pattern / pattern.sum(-1, keepdim=True)


def forcing(layer_heads: dict[tuple[int, int], torch.Tensor]):
    """Hooks that replace the given heads' patterns by fixed [pos, pos] patterns."""
    hooks = []
    for (layer, head), pattern in layer_heads.items():

        def hook(activation, hook, head=head, pattern=pattern):
            activation = activation.clone()
            activation[:, head] = pattern
            return activation

        hooks.append((f"blocks.{layer}.attn.hook_pattern", hook))
    return hooks


PREVIOUS = (0, 1)
DUPLICATE = (0, 3)
INDUCTION = (1, 2)


def constructed_patterns():
    tokens = TOKENS[0]
    return {
        PREVIOUS: rows_or_bos(get_previous_token_head_detection_pattern(tokens)),
        DUPLICATE: rows_or_bos(get_duplicate_token_head_detection_pattern(tokens)),
        INDUCTION: rows_or_bos(get_induction_head_detection_pattern(tokens)),
    }


def test_detection_patterns_by_hand():
    tokens = torch.tensor([7, 3, 5, 3, 3])
    duplicate = torch.zeros(5, 5)
    duplicate[3, 1] = duplicate[4, 1] = duplicate[4, 3] = 1
    assert torch.equal(get_duplicate_token_head_detection_pattern(tokens), duplicate)
    induction = torch.zeros(5, 5)
    induction[3, 2] = induction[4, 2] = induction[4, 4] = 1  # after each earlier 3 (positions 1 and 3)
    assert torch.equal(get_induction_head_detection_pattern(tokens), induction)
    previous = torch.zeros(5, 5)
    previous[1, 0] = previous[2, 1] = previous[3, 2] = previous[4, 3] = 1
    assert torch.equal(get_previous_token_head_detection_pattern(tokens), previous)


@pytest.mark.parametrize(
    ("name", "target"),
    [("previous_token_head", PREVIOUS), ("duplicate_token_head", DUPLICATE), ("induction_head", INDUCTION)],
)
def test_constructed_heads_score_one_and_others_lower(model, name, target):
    with model.hooks(fwd_hooks=forcing(constructed_patterns())):
        scores = detect_head(model, TOKENS, name, exclude_bos=True)
    assert scores.shape == (CFG.n_layers, CFG.n_heads)
    assert scores[target].item() == pytest.approx(1.0, abs=1e-6)
    others = torch.ones_like(scores, dtype=torch.bool)
    others[target] = False
    assert (scores[others] < 0.9).all(), scores


def test_previous_token_head_without_excluding_bos(model):
    """Query 0 has no previous token: a perfect head scores (P - 1) / P under both measures."""
    with model.hooks(fwd_hooks=forcing(constructed_patterns())):
        mul = detect_head(model, TOKENS, "previous_token_head")
        absolute = detect_head(model, TOKENS, "previous_token_head", error_measure="abs")
        absolute_no_bos = detect_head(model, TOKENS, "previous_token_head", error_measure="abs", exclude_bos=True)
    assert mul[PREVIOUS].item() == pytest.approx((P - 1) / P, abs=1e-6)
    assert absolute[PREVIOUS].item() == pytest.approx(1 - 1 / P, abs=1e-6)  # only row 0 differs, by 1
    assert absolute_no_bos[PREVIOUS].item() == pytest.approx(1.0, abs=1e-6)
    assert (absolute <= absolute[PREVIOUS] + 1e-6).all()


def test_custom_pattern_cache_and_heads(model):
    custom = get_previous_token_head_detection_pattern(TOKENS[0])
    with torch.no_grad(), model.hooks(fwd_hooks=forcing(constructed_patterns())):
        _, cache = model.run_with_cache(TOKENS)
    named = detect_head(model, TOKENS, "previous_token_head", cache=cache, exclude_bos=True)
    from_tensor = detect_head(model, TOKENS, custom, cache=cache, exclude_bos=True)
    torch.testing.assert_close(from_tensor, named)
    only = detect_head(model, TOKENS, custom, heads=[PREVIOUS, (1, 0)], cache=cache, exclude_bos=True)
    assert only[PREVIOUS].item() == pytest.approx(1.0, abs=1e-6)
    assert (only[0, [0, 2, 3]] == -1).all() and (only[1, 1:] == -1).all() and only[1, 0] != -1
    batch_cache = cache.cache_dict  # the batch axis is optional
    unbatched = {name: t[0] for name, t in batch_cache.items()}
    torch.testing.assert_close(detect_head(model, TOKENS, custom, cache=unbatched, exclude_bos=True), named)


def test_exclude_current_token(model):
    """A head that attends only to itself scores 0 on the current token once it is excluded."""
    itself = {(0, 0): torch.eye(P)}
    diagonal = torch.eye(P)
    with model.hooks(fwd_hooks=forcing(itself)):
        plain = detect_head(model, TOKENS, diagonal)
        excluded = detect_head(model, TOKENS, diagonal, exclude_current_token=True)
    assert plain[0, 0].item() == pytest.approx(1.0)
    assert excluded[0, 0].item() == 0.0


def test_a_list_of_prompts_averages_their_scores(model):
    model.set_tokenizer(tiny_tokenizer())
    prompts = ["the cat sat on the mat", "hello world hello world the cat"]
    together = detect_head(model, prompts, "duplicate_token_head", exclude_bos=True)
    alone = [detect_head(model, prompt, "duplicate_token_head", exclude_bos=True) for prompt in prompts]
    torch.testing.assert_close(together, (alone[0] + alone[1]) / 2)
    assert together.shape == (CFG.n_layers, CFG.n_heads) and (together >= 0).all()


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="error_measure"):
        detect_head(model, TOKENS, "induction_head", error_measure="l2")
    with pytest.raises(ValueError, match="detection_pattern"):
        detect_head(model, TOKENS, "copying_head")
    with pytest.raises(ValueError, match="square"):
        detect_head(model, TOKENS, torch.zeros(3, 3))

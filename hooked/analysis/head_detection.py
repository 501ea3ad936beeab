"""Head detection: score every attention head by how closely its pattern matches a reference pattern.

Named patterns (TransformerLens's `head_detector`, after Olsson et al. 2022, "In-context Learning and
Induction Heads"), each a [query_pos, key_pos] matrix of 0s and 1s, lower triangular:
- "previous_token_head": query i attends to key i - 1;
- "duplicate_token_head": query i attends to every earlier key j < i holding the same token;
- "induction_head": query i attends to every key j <= i right after an earlier copy of its token
  (tokens[j - 1] == tokens[i], j - 1 < i).
Any other [pos, pos] tensor may be given as `detection_pattern`.

Scores ("error_measure"), for one head's pattern A and the detection pattern D:
- "mul" (default): sum(A * D) / sum(A), the share of the head's attention that lands where D is 1,
  averaged over queries (each query's row of A sums to 1). A perfect previous-token head scores
  (P - 1) / P, because query 0 has no previous token; `exclude_bos=True` drops key 0 from A first
  (attention to BOS, often a resting place, then counts neither way), after which it scores 1.0.
- "abs": 1 - sum(|A - D|) / P, one minus the mean over queries of the L1 distance between the two
  rows (from -1 to 1; 1 is identical). TransformerLens rounded it to 3 decimals; we do not.
`exclude_current_token=True` also drops the diagonal of A (and, for "abs", of the difference).
"""

from __future__ import annotations

import typing
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: list[HeadName] = list(typing.get_args(HeadName))  # TransformerLens's list of the named patterns
ErrorMeasure = Literal["mul", "abs"]


def get_previous_token_head_detection_pattern(tokens: Int[Tensor, " pos"]) -> Float[Tensor, "pos pos"]:
    """1 at (i, i - 1): each query attends to the key just before it."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(n - 1), diagonal=-1)


def get_duplicate_token_head_detection_pattern(tokens: Int[Tensor, " pos"]) -> Float[Tensor, "pos pos"]:
    """1 at (i, j) for j < i with tokens[j] == tokens[i]: earlier copies of the current token."""
    same = tokens[:, None] == tokens[None, :]
    return torch.tril(same, diagonal=-1).float()


def get_induction_head_detection_pattern(tokens: Int[Tensor, " pos"]) -> Float[Tensor, "pos pos"]:
    """1 at (i, j) for 0 < j <= i with tokens[j - 1] == tokens[i]: the token after an earlier copy."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    induction = torch.zeros_like(duplicate)
    induction[:, 1:] = duplicate[:, :-1]  # key j - 1 was a copy, so attend to key j
    return induction


_PATTERNS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def detect_head(
    model,
    seq: str | list[str] | Int[Tensor, "batch pos"],
    detection_pattern: HeadName | Float[Tensor, "pos pos"],
    heads: Sequence[tuple[int, int]] | Mapping[int, Sequence[int]] | None = None,
    cache: Mapping[str, Tensor] | None = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Float[Tensor, "n_layers n_heads"]:
    """[n_layers, n_heads] scores of each head's attention pattern on `seq` against `detection_pattern`.

    `seq` is a prompt, a list of prompts (each scored alone and the scores averaged), or tokens
    [batch, pos] / [pos] (unpadded; the rows' scores are averaged). A named `detection_pattern` is
    built from each row's tokens; a tensor one applies to every row. `heads` limits the work to a list
    of (layer, head) or a {layer: [heads]} dict; the other entries are -1. `cache` reuses a run of
    `seq` (with or without its batch axis) instead of running the model. Scores: see the module docstring.
    """
    if error_measure not in ("mul", "abs"):
        raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}.")
    if isinstance(detection_pattern, str) and detection_pattern not in _PATTERNS:
        raise ValueError(f"detection_pattern must be one of {sorted(_PATTERNS)} or a [pos, pos] tensor.")
    options = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token, error_measure=error_measure)
    if isinstance(seq, list):
        if cache is not None:
            raise ValueError("A cache can only be reused for a single prompt or a tokens tensor.")
        scores = [detect_head(model, one, detection_pattern, heads, **options) for one in seq]
        return torch.stack(scores).mean(0)

    tokens = model.to_tokens(seq) if isinstance(seq, str) else seq
    tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    layer_heads = _layer_heads(model, heads)
    if cache is None:
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in layer_heads]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens.to(model.device), names_filter=names)

    scores = -torch.ones(model.cfg.n_layers, model.cfg.n_heads)
    for layer, layer_head_list in layer_heads.items():
        patterns = cache[f"blocks.{layer}.attn.hook_pattern"].detach().float().cpu()
        patterns = patterns.unsqueeze(0) if patterns.ndim == 3 else patterns  # [batch, head, query, key]
        if patterns.shape[0] != tokens.shape[0] or patterns.shape[-1] != tokens.shape[-1]:
            raise ValueError(
                f"The cached pattern has shape {tuple(patterns.shape)} but seq is {tuple(tokens.shape)} tokens."
            )
        for head in layer_head_list:
            row_scores = [
                head_score(patterns[row, head], _detection(detection_pattern, tokens[row]), **options)
                for row in range(tokens.shape[0])
            ]
            scores[layer, head] = sum(row_scores) / len(row_scores)
    return scores


def head_score(
    attention_pattern: Float[Tensor, "pos pos"],
    detection_pattern: Float[Tensor, "pos pos"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> float:
    """One head's score against one detection pattern (see the module docstring)."""
    pattern = attention_pattern.float().clone()
    detection = detection_pattern.to(pattern).clone()
    n = pattern.shape[-1]
    if pattern.shape != (n, n) or detection.shape != (n, n):
        raise ValueError(
            f"Patterns must be square and alike: attention {tuple(pattern.shape)}, detection {tuple(detection.shape)}."
        )
    if error_measure == "mul":
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        total = pattern.sum()
        return (pattern * detection).sum().item() / total.item() if total > 0 else 0.0
    difference = (pattern - detection).abs()
    if exclude_bos:
        difference[:, 0] = 0
    if exclude_current_token:
        difference.fill_diagonal_(0)
    return 1.0 - difference.sum().item() / n


def _detection(detection_pattern: str | Tensor, tokens: Tensor) -> Tensor:
    if isinstance(detection_pattern, str):
        return _PATTERNS[detection_pattern](tokens.cpu())
    return detection_pattern.detach().float().cpu()


def _layer_heads(model, heads) -> dict[int, list[int]]:
    if heads is None:
        return {layer: list(range(model.cfg.n_heads)) for layer in range(model.cfg.n_layers)}
    if isinstance(heads, Mapping):
        return {int(layer): [int(h) for h in hs] for layer, hs in heads.items()}
    grouped: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        grouped[int(layer)].append(int(head))
    return dict(grouped)

"""Influence and pruning of attribution graphs (Ameisen et al. 2025, "Circuit Tracing", section on pruning).

A node's influence on the logits counts every path: with A the adjacency with each target's row of
absolute edge weights normalized to sum to 1, and w the logit nodes' probabilities, influence =
w (A + A^2 + A^3 + ...), a finite sum since the graph has no cycles (a feature's inputs come from
earlier layers). Pruning keeps the most influential nodes, up to `node_threshold` of the total influence
(tokens and logits always stay), then, in what remains, the edges carrying up to `edge_threshold` of
the influence flowing through edges, and then drops features and errors left with no outgoing edge
(and features with no incoming one), until nothing changes. circuit-tracer prunes the same way, with
the same defaults (0.8, 0.98), so a graph pruned here shows the same nodes in its viewer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def normalized(adjacency: Tensor) -> Tensor:
    """|adjacency| with each row summing to 1 (rows with no edges stay zero)."""
    weights = adjacency.abs()
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(adjacency: Tensor, logit_weights: Tensor, max_steps: int = 10_000) -> Tensor:
    """w (A + A^2 + ...) for a square adjacency [target, source] and weights on its nodes."""
    step = logit_weights @ adjacency
    total = step.clone()
    for _ in range(max_steps):
        if not step.any():
            return total
        step = step @ adjacency
        total += step
    raise RuntimeError("Influence did not converge: the adjacency has a cycle, which no attribution graph has.")


def partial_influence(rows: Tensor, row_feature: Tensor, probabilities: Tensor) -> Tensor:
    """Influence on the sources (columns) through the rows computed so far, while a graph is being built:
    `rows` [n_logits + k, n_sources] are the logits' rows and then those of k features, `row_feature` [k]
    the feature (source column) each of those k rows belongs to."""
    n_logits = len(probabilities)
    A = normalized(rows)
    step = probabilities.to(A) @ A[:n_logits]
    total = step.clone()
    while True:
        weights = step[row_feature]  # what reaches each feature whose own row is known
        if not weights.any():
            return total
        step = weights @ A[n_logits:]
        total += step


def smallest_share(scores: Tensor, share: float) -> Tensor:
    """The score at which the largest scores first make up `share` of the total: keeping every score >= it
    keeps that share (at least one)."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp(min=1e-30)
    index = int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype)))
    return ordered[min(index, len(ordered) - 1)]


class Pruned(NamedTuple):
    node_mask: Tensor  # [n_nodes] bool
    edge_mask: Tensor  # [n_nodes, n_nodes] bool, [target, source]
    cumulative_influence: Tensor  # [n_nodes]: the share of all influence held by the nodes at least this influential


def prune(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """The nodes and edges of `graph` that carry `node_threshold` / `edge_threshold` of the influence
    on its logits (module docstring)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} is a share of the total influence: it must be in [0, 1].")
    weights = torch.zeros(graph.n_nodes)
    weights[graph.logit_nodes] = graph.logit_probabilities.float()
    node_influence = influence(normalized(graph.adjacency), weights)
    node_mask = node_influence >= smallest_share(node_influence, node_threshold)
    node_mask[graph.token_nodes.start :] = True  # tokens and logits always stay
    pruned = graph.adjacency * node_mask[:, None] * node_mask[None, :]
    flowing = normalized(pruned)
    edge_scores = flowing * (influence(flowing, weights) + weights)[:, None]
    edge_mask = edge_scores >= smallest_share(edge_scores, edge_threshold)
    inner = slice(0, graph.token_nodes.start)  # features and errors
    features = graph.feature_nodes
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask[inner] &= edge_mask[:, inner].any(0)  # features and errors write to something kept
        node_mask[features] &= edge_mask[features].any(1)  # features read from something kept
        if torch.equal(node_mask, before):
            break
    ordered, order = torch.sort(node_influence, descending=True)
    cumulative = torch.empty_like(node_influence)
    cumulative[order] = torch.cumsum(ordered, 0) / ordered.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, cumulative)

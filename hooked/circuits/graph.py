"""The attribution graph of one prompt: nodes, the direct effects between them, and what checks them.

Built by `attribution_graph` (attribute.py, which explains the nodes and edges). Every tensor is on the
CPU. Besides the adjacency it keeps, per target node, its `value` (from the clean forward pass), its
`bias` (from a forward pass with every source removed) and `dropped` (edges from features left out by
`max_feature_nodes`), so that `completeness()` can check the graph against the model it came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from hooked.circuits import prune as pruning
from hooked.circuits.export import write_json


@dataclass
class AttributionGraph:
    tokens: Tensor  # [n_pos] the prompt
    features: Tensor  # [n_features, 3] (layer, position, feature index), sorted
    activations: Tensor  # [n_features]
    logit_tokens: Tensor  # [n_logits] token ids of the logit nodes, most likely first
    logit_probabilities: Tensor  # [n_logits]
    adjacency: Tensor  # [n_nodes, n_nodes]: adjacency[target, source] = direct effect
    bias: Tensor  # [n_nodes]: what no node accounts for in each target's value (0 for sources)
    dropped: Tensor  # [n_nodes]: edges from features left out by max_feature_nodes, summed per target
    values: Tensor  # [n_nodes]: features' pre-activations, logits minus the mean logit (0 for sources)
    n_layers: int
    hook_in: str  # the hook every transcoder reads, e.g. "hook_resid_mid" (in each block)
    hook_out: str  # the hook it writes, e.g. "hook_mlp_out"
    model_name: str = ""
    token_strings: list[str] | None = None  # the prompt's tokens as text
    logit_strings: list[str] | None = None  # the logit nodes' tokens as text

    # ---- node ranges ----------------------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def feature_nodes(self) -> slice:
        return slice(0, self.n_features)

    @property
    def error_nodes(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_nodes(self) -> slice:
        return slice(self.error_nodes.stop, self.error_nodes.stop + self.n_pos)

    @property
    def logit_nodes(self) -> slice:
        return slice(self.token_nodes.stop, self.n_nodes)

    def error_node(self, layer: int, pos: int) -> int:
        return self.error_nodes.start + layer * self.n_pos + pos

    def token_node(self, pos: int) -> int:
        return self.token_nodes.start + pos

    def feature_node(self, layer: int, pos: int, index: int) -> int:
        """The node of feature `index` at (layer, pos); a KeyError if it is not in the graph."""
        match = torch.nonzero((self.features == torch.tensor([layer, pos, index])).all(-1)).flatten()
        if len(match) == 0:
            raise KeyError(f"Feature {index} at layer {layer}, position {pos} is not a node of this graph (inactive).")
        return int(match[0])

    def describe(self, node: int) -> str:
        """A short label: 'feature 12 @ L3 P5', 'error @ L3 P5', "token 'Paris' @ P4", "logit ' Paris' (p=0.41)"."""
        if node < self.error_nodes.start:
            layer, pos, index = self.features[node].tolist()
            return f"feature {index} @ L{layer} P{pos}"
        if node < self.token_nodes.start:
            layer, pos = divmod(node - self.error_nodes.start, self.n_pos)
            return f"error @ L{layer} P{pos}"
        if node < self.logit_nodes.start:
            pos = node - self.token_nodes.start
            return f"token {self._token(int(self.tokens[pos]), pos)!r} @ P{pos}"
        i = node - self.logit_nodes.start
        return f"logit {self._token(int(self.logit_tokens[i]))!r} (p={float(self.logit_probabilities[i]):.3f})"

    def _token(self, token: int, pos: int | None = None) -> str:
        if pos is not None and self.token_strings is not None:
            return self.token_strings[pos]
        return str(token)

    # ---- checks and analysis ----------------------------------------------------------------------

    def completeness(self) -> Tensor:
        """Per node, incoming edges + bias + dropped - value: zero (to float rounding) for every feature and
        logit node when the graph accounts for its values exactly; sources (errors, tokens) have no
        incoming edges and are 0 by construction. [n_nodes]"""
        return self.adjacency.sum(dim=1) + self.bias + self.dropped - self.values

    def completeness_error(self) -> float:
        """The largest |completeness()| relative to that node's scale (its value, bias and summed |edges|)."""
        scale = self.adjacency.abs().sum(dim=1) + self.bias.abs() + self.dropped.abs() + self.values.abs()
        return float((self.completeness().abs() / scale.clamp(min=1e-12)).max())

    def influence(self) -> Tensor:
        """Each node's influence on the logits through every path (prune.py), [n_nodes]."""
        weights = torch.zeros(self.n_nodes)
        weights[self.logit_nodes] = self.logit_probabilities.float()
        return pruning.influence(pruning.normalized(self.adjacency), weights)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> pruning.Pruned:
        """Masks of the nodes and edges carrying that share of the influence on the logits (prune.py)."""
        return pruning.prune(self, node_threshold, edge_threshold)

    def top_edges(self, target: int, k: int = 10) -> list[tuple[str, float]]:
        """The k incoming edges of `target` largest in size, as (source label, weight)."""
        row = self.adjacency[target]
        order = torch.argsort(row.abs(), descending=True)[:k]
        return [(self.describe(int(s)), float(row[s])) for s in order if row[s] != 0]

    # ---- files --------------------------------------------------------------------------------------

    def to_json(self, path: str | Path, slug: str = "graph", **options) -> dict:
        """Write the pruned graph as the JSON circuit-tracer's and Neuronpedia's graph viewers read
        (export.py; `options`: node_threshold, edge_threshold, scan); returns the written object."""
        return write_json(self, Path(path), slug, **options)

    def save(self, path: str | Path) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        return cls(**torch.load(path, weights_only=True))

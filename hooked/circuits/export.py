"""An attribution graph as the JSON file circuit-tracer's and Neuronpedia's graph viewers load.

The schema is circuit-tracer 0.5's (`circuit_tracer.frontend.graph_models.Model`, which the client
test validates our files against): {"metadata", "qParams", "nodes", "links"}. Nodes are named as its
viewer expects: a feature "{layer}_{index}_{pos}", an error "0_{layer}_{pos}", a token
"E_{token id}_{pos}", a logit "{n_layers + 1}_{token id}_{last pos}"; links are {"source", "target",
"weight"} with the direct effect as weight. (The scheme gives a layer-0 feature i at position p and layer i's
error at p the same id, "0_i_p"; circuit-tracer's files have the same clash, and we keep its ids so its
viewer reads ours; `feature_type` tells the two apart.) Only the pruned graph is written (prune.py), and of its
nodes those a kept edge touches, plus every token and logit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SCHEMA_VERSION = 1


def cantor(x: int, y: int) -> int:
    """One integer for a pair of naturals; the viewer's `feature` id of a feature is cantor(layer, index)."""
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js_id: str, **fields) -> dict:
    defaults = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": ""}
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": pos,
        "feature_type": kind,
        "jsNodeId": js_id,
        "influence": None,
        "activation": None,
        **defaults,
        **fields,
    }


def node_object(graph, node: int, influence: float) -> dict:
    """The viewer's object for one node of `graph`."""
    if node < graph.error_nodes.start:
        layer, pos, index = graph.features[node].tolist()
        activation = float(graph.activations[node])
        kind, js_id = "cross layer transcoder", f"{layer}_{index}-0"
        node_id = f"{layer}_{index}_{pos}"
        return _node(node_id, cantor(layer, index), str(layer), pos, kind, js_id, activation=activation)
    if node < graph.token_nodes.start:
        layer, pos = divmod(node - graph.error_nodes.start, graph.n_pos)
        kind, js_id = "mlp reconstruction error", f"{layer}_{pos}-0"
        return _node(f"0_{layer}_{pos}", -1, str(layer), pos, kind, js_id, influence=influence)
    if node < graph.logit_nodes.start:
        pos = node - graph.token_nodes.start
        token = int(graph.tokens[pos])
        return _node(f"E_{token}_{pos}", pos, "E", pos, "embedding", f"E_{token}-{pos}", influence=influence)
    i, last, layer = node - graph.logit_nodes.start, graph.n_pos - 1, str(graph.n_layers + 1)
    token, probability = int(graph.logit_tokens[i]), float(graph.logit_probabilities[i])
    text = graph.logit_strings[i] if graph.logit_strings else str(token)
    return _node(
        f"{layer}_{token}_{last}", token, layer, last, "logit", f"L_{token}-{last}",
        token_prob=probability, is_target_logit=i == 0, clerp=f'Output "{text}" (p={probability:.3f})',
    )  # fmt: skip


def graph_json(
    graph, slug: str = "graph", node_threshold: float = 0.8, edge_threshold: float = 0.98, scan: str | None = None
) -> dict:
    """The viewer's object for `graph` pruned at these thresholds. `scan` names the transcoder set (the
    viewer looks feature descriptions up by it); by default the model's name and the transcoders' hooks."""
    pruned = graph.prune(node_threshold, edge_threshold)
    kept = torch.nonzero(pruned.node_mask).flatten().tolist()
    objects = {node: node_object(graph, node, float(pruned.cumulative_influence[node])) for node in kept}
    for node, obj in objects.items():  # circuit-tracer sets influence on features too, activation only there
        obj["influence"] = float(pruned.cumulative_influence[node])
    targets, sources = torch.nonzero(pruned.edge_mask, as_tuple=True)
    links = [
        {"source": objects[s]["node_id"], "target": objects[t]["node_id"], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(targets.tolist(), sources.tolist(), strict=True)
        if s in objects and t in objects
    ]
    touched = {link["source"] for link in links} | {link["target"] for link in links}
    always = ("embedding", "logit")
    nodes = [obj for obj in objects.values() if obj["node_id"] in touched or obj["feature_type"] in always]
    tokens = graph.token_strings or [str(int(t)) for t in graph.tokens]
    metadata = {
        "slug": slug,
        "scan": scan or f"{graph.model_name}:{graph.hook_in}->{graph.hook_out}",
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": "".join(tokens),
        "node_threshold": node_threshold,
        "schema_version": SCHEMA_VERSION,
    }
    q_params = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def write_json(graph, path: Path, slug: str = "graph", **options) -> dict:
    """`graph_json` written to `path` (a .json file, or a folder to hold `<slug>.json`)."""
    data = graph_json(graph, slug, **options)
    target = path / f"{slug}.json" if path.suffix != ".json" else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1))
    return data

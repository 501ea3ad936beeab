"""`attribution_graph(model, prompt, transcoders)`: the direct effects between a prompt's features, error
terms, token embeddings and top logits in the local replacement model (see replacement.py).

Nodes, in this order (circuit-tracer's, so its tools read our adjacency as theirs):

    features   every (layer, position, feature) a transcoder activates, sorted
    errors     one per (layer, position): the MLP output minus the transcoder's reconstruction
    tokens     one per position: the embedding the residual stream starts from (`hook_embed`)
    logits     the most likely next tokens at the last position, until their probabilities sum to
               `desired_logit_prob` (at most `max_n_logits`), or the `targets` given

`adjacency[t, s]` is the direct effect of source s on target t: how much of t's value s writes along
paths through the residual stream and attention (patterns and norm scales frozen) that pass no other
node. A feature's value is its pre-activation; a logit's is the logit minus the mean logit over the
vocabulary (before any soft cap), which is what its unembedding direction minus the mean direction reads.

Three passes. A clean forward records each transcoder's input and each MLP's output. One forward on
`batch_size` copies of the prompt, in the linear model (each MLP output replaced by a constant with a
gradient, `linear_skip`), keeps its graph; each backward pass injects one target's reading direction per
copy (a feature's encoder row at its input, a logit's demeaned unembedding at the unembedding's input)
and contracts the gradients at every MLP output and at the embeddings with the sources' vectors: a
feature's activation times its decoder row, an error vector, an embedding. A last forward with every
source removed (embeddings zero, MLP outputs without their features and errors, patterns and scales
fixed at the clean run's) gives each target's `bias`: what no node accounts for (biases, positional
embeddings, the first `constant_positions` positions' MLP outputs). By linearity each target's
incoming edges plus its bias equal its value: `AttributionGraph.completeness()` checks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from hooked.circuits.graph import AttributionGraph
from hooked.circuits.passes import RetainedForward, bias_run
from hooked.circuits.prune import partial_influence
from hooked.circuits.replacement import check_transcoders
from hooked.dictionaries import SAE
from hooked.dictionaries.splice import check_fits
from hooked.progress import progress_bar

_LAYER_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_FROZEN = ("attn.hook_pattern", ".hook_scale")  # what the linear model holds at the clean run's values


def attribution_graph(
    model,
    prompt: str | Tensor | Sequence[int],
    transcoders: Iterable[SAE],
    *,
    targets: Sequence[int | str] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 32,
    constant_positions: int = 1,
    progress: bool | None = None,
) -> AttributionGraph:
    """The attribution graph of `prompt`'s next token (module docstring), with one transcoder per layer
    (a layer without one has its whole MLP output as its error node).

    `targets`: token ids or strings for the logit nodes instead of the most likely ones. `max_feature_nodes`:
    keep only that many features, visited in order of their influence on the logits so far (edges from the
    others are summed per target into `graph.dropped`). `constant_positions`: the first positions whose MLP
    outputs are constants rather than nodes (a BOS token's features are large and say nothing about the
    prompt; circuit-tracer treats position 0 so). `batch_size`: targets per backward pass (and copies of
    the prompt in the retained forward)."""
    if batch_size < 1 or constant_positions < 0:
        raise ValueError(f"batch_size={batch_size} must be >= 1 and constant_positions={constant_positions} >= 0.")
    tokens = _prompt_tokens(model, prompt)
    n_pos, n_layers = tokens.shape[0], model.cfg.n_layers
    in_names, out_names, by_layer = _hook_names(model, check_transcoders(model, transcoders))
    clean = _clean_run(model, tokens, in_names, out_names)
    parts = [_layer_part(by_layer.get(layer), clean, layer, constant_positions) for layer in range(n_layers)]
    logit_ids, probabilities, logit_vectors, logit_values = _logit_targets(
        model, clean, targets, max_n_logits, desired_logit_prob
    )
    features = torch.cat([part["features"] for part in parts])  # [n_features, 3]: layer, pos, index
    n_features, n_logits = len(features), len(logit_ids)
    n_sources = n_features + (n_layers + 1) * n_pos
    budget = n_features if max_feature_nodes is None else min(max_feature_nodes, n_features)

    retained = RetainedForward(model, tokens, in_names, out_names, by_layer, batch_size, clean["embed"])
    # [target, source]: the logits' rows, then the features' in the order they are visited (row_feature)
    rows = torch.zeros(n_logits + budget, n_sources)
    row_feature = torch.zeros(budget, dtype=torch.long)
    visited = torch.zeros(n_features, dtype=torch.bool)
    filled = 0
    with progress_bar(total=n_logits + budget, progress=progress, desc="attribution graph", unit="node") as bar:
        for start in range(0, n_logits, batch_size):
            chunk = range(start, min(start + batch_size, n_logits))
            rows[chunk.start : chunk.stop] = retained.rows(
                [("final", n_pos - 1, logit_vectors[i]) for i in chunk], parts, n_sources
            )
            bar.update(len(chunk))
        encoders = torch.cat([part["encoders"] for part in parts])
        while filled < budget:
            computed = rows[: n_logits + filled], row_feature[:filled]
            for chunk in _next_features(*computed, visited, probabilities, budget, batch_size):
                injections = [(("in", int(features[i, 0])), int(features[i, 1]), encoders[i]) for i in chunk]
                rows[n_logits + filled : n_logits + filled + len(chunk)] = retained.rows(injections, parts, n_sources)
                row_feature[filled : filled + len(chunk)] = chunk
                visited[chunk] = True
                filled += len(chunk)
                bar.update(len(chunk))
    del retained  # the batch-sized graph

    bias = bias_run(model, tokens, clean, parts, in_names, out_names, by_layer)
    n_kept = int(visited.sum())
    n_nodes = n_kept + (n_layers + 1) * n_pos + n_logits
    # features' rows sorted by feature (as their nodes are), then the logits'
    target_rows = rows[torch.cat([n_logits + torch.argsort(row_feature), torch.arange(n_logits)])]
    source_columns = torch.cat([visited, torch.ones(n_sources - n_features, dtype=torch.bool)])
    node_rows = torch.cat([torch.arange(n_kept), torch.arange(n_nodes - n_logits, n_nodes)])
    adjacency = torch.zeros(n_nodes, n_nodes)
    dropped, values, node_bias = torch.zeros(n_nodes), torch.zeros(n_nodes), torch.zeros(n_nodes)
    adjacency[node_rows, : n_nodes - n_logits] = target_rows[:, source_columns]
    dropped[node_rows] = target_rows[:, :n_features][:, ~visited].sum(-1)
    values[node_rows] = torch.cat([torch.cat([part["values"] for part in parts])[visited], logit_values])
    logit_bias = (bias["final"] @ logit_vectors.T + _demeaned(model.unembed.b_U, logit_ids)).cpu()
    node_bias[node_rows] = torch.cat([bias["features"][visited], logit_bias])
    return AttributionGraph(
        tokens=tokens.cpu(),
        features=features[visited],
        activations=torch.cat([part["activations"] for part in parts])[visited],
        logit_tokens=logit_ids.cpu(),
        logit_probabilities=probabilities,
        adjacency=adjacency,
        bias=node_bias,
        dropped=dropped,
        values=values,
        n_layers=n_layers,
        hook_in=_LAYER_HOOK.match(in_names[0]).group(2),
        hook_out=_LAYER_HOOK.match(out_names[0]).group(2),
        model_name=model.cfg.model_name,
        **_texts(model, tokens, logit_ids),
    )


def _texts(model, tokens: Tensor, logit_ids: Tensor) -> dict:
    if getattr(model, "tokenizer", None) is None:
        return {}
    return {
        "token_strings": list(model.to_str_tokens(tokens)),
        "logit_strings": [model.to_string(int(i)) for i in logit_ids],
    }


def _prompt_tokens(model, prompt) -> Tensor:
    if isinstance(prompt, str):
        return model.to_tokens(prompt)[0]
    tokens = torch.as_tensor(prompt, dtype=torch.long, device=model.device)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise ValueError(
            f"An attribution graph explains one prompt: got tokens of shape {tuple(tokens.shape)}; pass a string, "
            "a 1-D token sequence or a [1, pos] tensor (one graph per prompt)."
        )
    return tokens


def _hook_names(model, transcoders: list[SAE]) -> tuple[list[str], list[str], dict[int, SAE]]:
    """Per layer, the hook each MLP's transcoder reads and the one it writes; the transcoders by layer."""
    by_layer: dict[int, SAE] = {}
    suffixes: set[tuple[str, str]] = set()
    for transcoder in transcoders:
        check_fits(model, transcoder)
        read, write = _LAYER_HOOK.match(transcoder.hook_name), _LAYER_HOOK.match(transcoder.hook_name_out)
        if read is None or write is None or read.group(1) != write.group(1):
            raise ValueError(
                f"A transcoder must read and write hooks of one block (blocks.<layer>.<hook>); this one reads "
                f"{transcoder.hook_name!r} and writes {transcoder.hook_name_out!r}."
            )
        layer = int(read.group(1))
        if layer in by_layer:
            raise ValueError(f"Two transcoders for layer {layer}: pass one per MLP.")
        by_layer[layer] = transcoder
        suffixes.add((read.group(2), write.group(2)))
    if len(suffixes) != 1:
        raise ValueError(
            f"The transcoders read and write different hooks from layer to layer ({sorted(suffixes)}); an "
            "attribution graph needs one pair for every layer (e.g. hook_resid_mid -> hook_mlp_out)."
        )
    (read, write), layers = suffixes.pop(), range(model.cfg.n_layers)
    return [f"blocks.{layer}.{read}" for layer in layers], [f"blocks.{layer}.{write}" for layer in layers], by_layer


def _clean_run(model, tokens: Tensor, in_names: list[str], out_names: list[str]) -> dict:
    """The prompt's clean forward: transcoder inputs, MLP outputs, embeddings, frozen values, logits."""
    wanted = set(in_names + out_names + ["hook_embed", "unembed.hook_out"])
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens[None], names_filter=lambda name: name in wanted or name.endswith(_FROZEN)
        )
    return {
        "in": [cache[name][0] for name in in_names],
        "out": [cache[name][0].float() for name in out_names],
        "embed": cache["hook_embed"][0].float(),
        "frozen": {name: value for name, value in cache.cache_dict.items() if name.endswith(_FROZEN)},
        "logits": logits[0, -1].float(),  # what the model predicts (after any soft cap)
        "unembed": cache["unembed.hook_out"][0, -1].float(),  # before it
    }


def _layer_part(transcoder: SAE | None, clean: dict, layer: int, constant_positions: int) -> dict:
    """One layer's nodes: its active features (ids, activations, pre-activations, encoder and scaled decoder
    rows), their summed writes, and its error vectors; positions before `constant_positions` have none."""
    out = clean["out"][layer]
    d_out = out.shape[-1]
    if transcoder is None:
        features, activations = torch.zeros(0, 3, dtype=torch.long), out.new_zeros(0)
        d_in = clean["in"][layer].shape[-1]
        part = {"values": torch.zeros(0), "encoders": out.new_zeros(0, d_in), "decoders": out.new_zeros(0, d_out)}
        writes, recons = torch.zeros_like(out), torch.zeros_like(out)
    else:
        with torch.no_grad():
            x = clean["in"][layer].to(transcoder.dtype)
            pre = transcoder.pre_activation(x)
            acts = transcoder.activation(pre).float()
            acts[:constant_positions] = 0
            writes = acts @ transcoder.write_directions().detach().float()
            skip = transcoder.skip_term(x)
            recons = writes + transcoder.b_dec.float() + (0 if skip is None else skip.float())
        pos, index = torch.nonzero(acts, as_tuple=True)
        features = torch.stack([torch.full_like(pos, layer), pos, index], dim=1).cpu()
        activations = acts[pos, index]
        part = {
            "values": pre[pos, index].float().cpu(),
            "encoders": transcoder.W_enc.detach()[:, index].T.float(),
            "decoders": activations[:, None] * transcoder.write_directions().detach().float()[index],
        }
    error = out - recons
    error[:constant_positions] = 0
    return {**part, "features": features, "activations": activations.cpu(), "writes": writes, "error": error}


def _logit_targets(model, clean: dict, targets, max_n_logits: int, desired_logit_prob: float):
    """Logit nodes: token ids, probabilities, demeaned unembedding directions [k, d_model], values."""
    probabilities = torch.softmax(clean["logits"], dim=-1)
    if targets is None:
        top = torch.topk(probabilities, min(max_n_logits, probabilities.numel()))
        n = int(torch.searchsorted(torch.cumsum(top.values, 0), desired_logit_prob)) + 1
        ids = top.indices[: min(n, len(top.indices))]
    else:
        ids = torch.tensor(
            [model.to_single_token(t) if isinstance(t, str) else int(t) for t in targets], device=probabilities.device
        )
        if ids.numel() == 0 or ids.min() < 0 or ids.max() >= probabilities.numel():
            raise ValueError(f"targets {list(targets)} must be 1 or more token ids in 0..{probabilities.numel() - 1}.")
    W_U = model.unembed.W_U.detach().float()
    vectors = (W_U[:, ids] - W_U.mean(dim=1, keepdim=True)).T
    values = clean["unembed"][ids] - clean["unembed"].mean()
    return ids, probabilities[ids].cpu(), vectors, values.cpu()


def _demeaned(b_U: Tensor | None, ids: Tensor) -> Tensor:
    if b_U is None:
        return torch.zeros(len(ids), device=ids.device)
    b_U = b_U.detach().float()
    return b_U[ids] - b_U.mean()


def _next_features(rows: Tensor, row_feature: Tensor, visited: Tensor, probabilities: Tensor, budget: int, size: int):
    """Batches of `size` features to compute rows for next: all of them in order, or, under a budget, the
    unvisited ones with the most influence on the logits through the rows computed so far (4 batches at a
    time, then ranked again)."""
    n_features = len(visited)
    if budget == n_features:
        pending = torch.nonzero(~visited).flatten()
    else:
        influence = partial_influence(rows, row_feature, probabilities)[:n_features]
        ranked = torch.argsort(influence, descending=True)
        pending = ranked[~visited[ranked]][: min(4 * size, budget - int(visited.sum()))]
    return [pending[i : i + size] for i in range(0, len(pending), size)]

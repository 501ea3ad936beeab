"""Activation patching: run the corrupted input, paste in one piece of the clean run, measure the metric.

For each target (a layer and position, a head, a head at one position, one attention weight...) the
model runs on `corrupted_tokens` while a hook overwrites that piece of one activation with its value
from `clean_cache`; `patching_metric(logits)` says how much of the clean behaviour came back (Meng et
al. 2022, "Locating and Editing Factual Associations"; Wang et al. 2022, the IOI paper). The names,
argument order `(model, corrupted_tokens, clean_cache, patching_metric)` and output shapes are those
of TransformerLens's `patching` module, so notebooks written for it run unchanged.

What differs: several patches share one forward pass. The corrupted batch is repeated k times along
the batch axis (k = `patches_per_forward`), the hook writes target j into copy j only, and the logits
are split back into k slices of the original batch shape, each handed to the metric. Copies are
independent rows, so the results equal one-forward-per-patch up to float rounding (batched matmuls
may round differently; the tests hold them to 1e-5). A pass also starts at the earliest patched layer
from the cached corrupted residual (`start_at_layer`) instead of re-running the layers before it.

Tokens must be one unpadded batch (every row the same length, no padding): the patched runs pass no
attention mask, so a padded batch would attend to its padding.

Axis names of an index: "layer", "pos" (also "dest_pos", "src_pos"), "head_index" (also "head"):
the heads of the activation patched, so `n_key_value_heads` of them for k and v in grouped-query models.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooked.analysis.patch_setters import (  # noqa: F401  (re-exported under TransformerLens's names)
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
)
from hooked.names import get_act_name
from hooked.progress import progress_bar

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor | float]
PatchSetter = Callable[[Tensor, Sequence[int], Tensor], Tensor | None]

# Rough number of token positions (copies x batch x pos) per patched forward when
# `patches_per_forward` is not given: keeps the repeated logits to a few hundred MB for a 50k vocabulary.
TOKENS_PER_FORWARD = 1024
MAX_PATCHES_PER_FORWARD = 64
_KV_HOOKS = ("hook_k", "hook_v", "hook_rot_k", "hook_k_input", "hook_v_input")


# ---- the generic loop ---------------------------------------------------------------------------


def generic_activation_patch(
    model,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: Mapping[str, Tensor],
    patching_metric: Metric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    patches_per_forward: int | None = None,
    progress: bool | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The metric after each patch, as a tensor shaped by the index axes (or flat, for `index_df`).

    `activation_name` is shorthand for `utils.get_act_name` ("resid_pre", "z", "pattern", ...); the
    first entry of every index is the layer, which completes the hook name. Give either
    `index_axis_names` (every combination is patched; the output has one axis per name, e.g.
    ("layer", "pos") -> [n_layers, pos]) or `index_df`, the rows to patch: a pandas DataFrame as in
    TransformerLens, or an int tensor / nested list [n_patches, n_axes]; the output is then
    [n_patches]. With `return_index_df` the rows are returned too, as an int tensor [n_patches,
    n_axes] (pandas is not a dependency here).

    `patch_setter(corrupted_activation, index, clean_activation)` edits the corrupted activation (one
    copy of the batch) in place or returns the edited tensor. `patching_metric` gets logits of the
    corrupted batch's shape and returns a scalar. `patches_per_forward` (default: about
    TOKENS_PER_FORWARD token positions per pass) bounds memory; 1 gives one pass per patch.
    `progress`: a progress bar (None: where someone is watching, a terminal or a notebook; see hooked.progress).
    """
    tokens = _as_tokens(model, corrupted_tokens)
    batch, n_pos = tokens.shape
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("Give index_axis_names (e.g. ('layer', 'pos')) or index_df (the rows to patch).")
        sizes = [_axis_size(model, axis, n_pos, activation_name) for axis in index_axis_names]
        rows = torch.cartesian_prod(*(torch.arange(size) for size in sizes)).reshape(-1, len(sizes))
        out_shape = tuple(sizes)
    else:
        if index_axis_names is not None:
            raise ValueError("Give index_axis_names or index_df, not both.")
        rows = _rows_from_index_df(index_df)
        out_shape = (len(rows),)

    if patches_per_forward is None:
        patches_per_forward = min(MAX_PATCHES_PER_FORWARD, max(1, TOKENS_PER_FORWARD // (batch * n_pos)))
    if patches_per_forward < 1:
        raise ValueError(f"patches_per_forward must be at least 1, got {patches_per_forward}.")

    index_rows = [tuple(int(i) for i in row) for row in rows.tolist()]
    names = [get_act_name(activation_name, layer=index[0]) for index in index_rows]
    starts = _corrupted_residuals(model, tokens) if all(_block_of(name) is not None for name in names) else None

    values: list[float] = []
    with torch.no_grad(), progress_bar(total=len(index_rows), progress=progress, desc=activation_name) as bar:
        targets = list(zip(index_rows, names, strict=True))
        for first in range(0, len(targets), patches_per_forward):
            chunk = targets[first : first + patches_per_forward]
            values.extend(_run_chunk(model, tokens, clean_cache, patching_metric, patch_setter, chunk, starts))
            bar.update(len(chunk))
    results = torch.tensor(values, dtype=torch.float32, device=model.device).reshape(out_shape)
    return (results, rows) if return_index_df else results


def _run_chunk(
    model,
    tokens: Tensor,
    clean_cache: Mapping[str, Tensor],
    metric: Metric,
    setter: PatchSetter,
    chunk: list[tuple[tuple[int, ...], str]],
    starts: list[Tensor] | None,
) -> list[float]:
    """One forward pass on len(chunk) copies of the corrupted batch, copy j patched with chunk[j]."""
    copies, batch = len(chunk), tokens.shape[0]
    by_name: dict[str, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for copy, (index, name) in enumerate(chunk):
        by_name[name].append((copy, index))

    def make_hook(name: str, targets: list[tuple[int, tuple[int, ...]]]):
        clean = clean_cache[name]

        def patch(activation: Tensor, hook) -> Tensor:
            clean_here = clean.to(activation.device, activation.dtype)
            if clean_here.shape[0] != batch or clean_here.shape[1:] != activation.shape[1:]:
                raise ValueError(
                    f"clean_cache[{name!r}] has shape {tuple(clean.shape)} but the corrupted run's activation per "
                    f"copy is {(batch, *activation.shape[1:])}; cache the clean run with the batch axis "
                    "(no remove_batch_dim or pos_slice) on tokens of the same shape."
                )
            split = activation.unflatten(0, (copies, batch))  # a view: edits land in `activation`
            for copy, index in targets:
                edited = setter(split[copy], index, clean_here)
                if edited is not None and edited is not split[copy]:
                    split[copy] = edited
            return activation

        return patch

    hooks = [(name, make_hook(name, targets)) for name, targets in by_name.items()]
    if starts is None:
        logits = model.run_with_hooks(tokens.repeat(copies, 1), fwd_hooks=hooks)
    else:
        layer = min(_block_of(name) for name in by_name)
        residual = starts[layer].repeat(copies, 1, 1)
        logits = model.run_with_hooks(residual, start_at_layer=layer, fwd_hooks=hooks)
    values = []
    for part in logits.unflatten(0, (copies, batch)):
        value = torch.as_tensor(metric(part))
        if value.numel() != 1:
            raise ValueError(
                f"patching_metric returned shape {tuple(value.shape)}; it must return a scalar (e.g. average "
                "over the batch with .mean())."
            )
        values.append(value.item())
    return values


def _as_tokens(model, tokens: Tensor | str) -> Tensor:
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens)
    if not isinstance(tokens, Tensor) or tokens.is_floating_point():
        raise TypeError("corrupted_tokens must be integer tokens [batch, pos] (e.g. from model.to_tokens).")
    tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    return tokens.to(model.device)


def _axis_size(model, axis: str, n_pos: int, activation_name: str) -> int:
    cfg = model.cfg
    if axis in ("pos", "dest_pos", "src_pos"):
        return n_pos
    if axis == "layer":
        return cfg.n_layers
    if axis in ("head_index", "head"):
        is_kv = get_act_name(activation_name, layer=0).endswith(_KV_HOOKS)
        return cfg.n_key_value_heads if is_kv else cfg.n_heads
    raise ValueError(f"Unknown index axis {axis!r}; expected layer, pos, dest_pos, src_pos, head_index or head.")


def _rows_from_index_df(index_df: Any) -> Tensor:
    """Rows of a pandas DataFrame, array, tensor or nested list, as an int tensor [n_rows, n_axes]."""
    values = index_df.to_numpy() if hasattr(index_df, "to_numpy") else index_df
    rows = torch.as_tensor(values)
    if rows.ndim != 2 or rows.is_floating_point():
        raise ValueError(f"index_df must hold integer rows [n_patches, n_axes]; got shape {tuple(rows.shape)}.")
    return rows.long()


def _block_of(name: str) -> int | None:
    """The block index of a hook inside a block, else None."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else None


def _corrupted_residuals(model, tokens: Tensor) -> list[Tensor]:
    """The corrupted run's residual entering each block, to start patched passes from there."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_pre"))
    return [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(model.cfg.n_layers)]


# ---- the named helpers (TransformerLens's names, axes and shapes) -----------------------------


def _patcher(activation_name: str, axes: tuple[str, ...], setter: PatchSetter, what: str):
    def patch(
        model,
        corrupted_tokens: Int[Tensor, "batch pos"],
        clean_cache: Mapping[str, Tensor],
        patching_metric: Metric,
        *,
        patches_per_forward: int | None = None,
        progress: bool | None = None,
    ) -> Tensor:
        return generic_activation_patch(
            model,
            corrupted_tokens,
            clean_cache,
            patching_metric,
            setter,
            activation_name,
            index_axis_names=axes,
            patches_per_forward=patches_per_forward,
            progress=progress,
        )

    patch.__doc__ = f"[{', '.join(axes)}]: the metric after patching {what} (see generic_activation_patch)."
    return patch


get_act_patch_resid_pre = _patcher(
    "resid_pre", ("layer", "pos"), layer_pos_patch_setter, "the residual stream entering each block at one position"
)
get_act_patch_resid_mid = _patcher(
    "resid_mid",
    ("layer", "pos"),
    layer_pos_patch_setter,
    "the residual stream between attention and MLP at one position",
)
get_act_patch_attn_out = _patcher(
    "attn_out", ("layer", "pos"), layer_pos_patch_setter, "one layer's attention output at one position"
)
get_act_patch_mlp_out = _patcher(
    "mlp_out", ("layer", "pos"), layer_pos_patch_setter, "one layer's MLP output at one position"
)

get_act_patch_attn_head_out_all_pos = _patcher(
    "z", ("layer", "head_index"), layer_head_vector_patch_setter, "one head's output (hook_z) at every position"
)
get_act_patch_attn_head_q_all_pos = _patcher(
    "q", ("layer", "head_index"), layer_head_vector_patch_setter, "one head's queries at every position"
)
get_act_patch_attn_head_k_all_pos = _patcher(
    "k",
    ("layer", "head_index"),
    layer_head_vector_patch_setter,
    "one key head's keys at every position (n_key_value_heads heads)",
)
get_act_patch_attn_head_v_all_pos = _patcher(
    "v",
    ("layer", "head_index"),
    layer_head_vector_patch_setter,
    "one value head's values at every position (n_key_value_heads heads)",
)
get_act_patch_attn_head_pattern_all_pos = _patcher(
    "pattern", ("layer", "head_index"), layer_head_pattern_patch_setter, "one head's whole attention pattern"
)

get_act_patch_attn_head_out_by_pos = _patcher(
    "z",
    ("layer", "pos", "head_index"),
    layer_pos_head_vector_patch_setter,
    "one head's output (hook_z) at one position",
)
get_act_patch_attn_head_q_by_pos = _patcher(
    "q", ("layer", "pos", "head_index"), layer_pos_head_vector_patch_setter, "one head's query at one position"
)
get_act_patch_attn_head_k_by_pos = _patcher(
    "k",
    ("layer", "pos", "head_index"),
    layer_pos_head_vector_patch_setter,
    "one key head's key at one position (n_key_value_heads heads)",
)
get_act_patch_attn_head_v_by_pos = _patcher(
    "v",
    ("layer", "pos", "head_index"),
    layer_pos_head_vector_patch_setter,
    "one value head's value at one position (n_key_value_heads heads)",
)
get_act_patch_attn_head_pattern_by_pos = _patcher(
    "pattern",
    ("layer", "head_index", "dest_pos"),
    layer_head_pos_pattern_patch_setter,
    "one head's attention from one destination position",
)
get_act_patch_attn_head_pattern_dest_src_pos = _patcher(
    "pattern",
    ("layer", "head_index", "dest_pos", "src_pos"),
    layer_head_dest_src_pos_pattern_patch_setter,
    "one attention weight of one head",
)

# Name each helper after itself (for help() and tracebacks): they were all built as `patch` above.
for _name, _helper in list(globals().items()):
    if _name.startswith("get_act_patch_") and getattr(_helper, "__name__", None) == "patch":
        _helper.__name__ = _helper.__qualname__ = _name


def get_act_patch_block_every(
    model, corrupted_tokens, clean_cache, patching_metric, **kwargs
) -> Float[Tensor, "3 layer pos"]:
    """[3, n_layers, pos]: resid_pre, attn_out and mlp_out patched at each layer and position."""
    parts = (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
    return torch.stack([part(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) for part in parts])


def get_act_patch_attn_head_all_pos_every(
    model, corrupted_tokens, clean_cache, patching_metric, **kwargs
) -> Float[Tensor, "5 layer head"]:
    """[5, n_layers, n_heads]: each head's output, query, key, value and pattern patched at every position.

    In grouped-query models the key and value rows give each query head the effect of patching the
    key/value head it shares (repeated over its group).
    """
    args = (model, corrupted_tokens, clean_cache, patching_metric)
    groups = model.cfg.n_key_value_groups
    return torch.stack(
        [
            get_act_patch_attn_head_out_all_pos(*args, **kwargs),
            get_act_patch_attn_head_q_all_pos(*args, **kwargs),
            get_act_patch_attn_head_k_all_pos(*args, **kwargs).repeat_interleave(groups, dim=-1),
            get_act_patch_attn_head_v_all_pos(*args, **kwargs).repeat_interleave(groups, dim=-1),
            get_act_patch_attn_head_pattern_all_pos(*args, **kwargs),
        ]
    )


def get_act_patch_attn_head_by_pos_every(
    model, corrupted_tokens, clean_cache, patching_metric, **kwargs
) -> Float[Tensor, "5 layer pos head"]:
    """[5, n_layers, pos, n_heads]: output, query, key, value and pattern (by destination) of each head
    patched at each position. Grouped-query key/value rows are repeated over each group, as above."""
    args = (model, corrupted_tokens, clean_cache, patching_metric)
    groups = model.cfg.n_key_value_groups
    pattern = get_act_patch_attn_head_pattern_by_pos(*args, **kwargs)
    return torch.stack(
        [
            get_act_patch_attn_head_out_by_pos(*args, **kwargs),
            get_act_patch_attn_head_q_by_pos(*args, **kwargs),
            get_act_patch_attn_head_k_by_pos(*args, **kwargs).repeat_interleave(groups, dim=-1),
            get_act_patch_attn_head_v_by_pos(*args, **kwargs).repeat_interleave(groups, dim=-1),
            einops.rearrange(pattern, "layer head pos -> layer pos head"),
        ]
    )

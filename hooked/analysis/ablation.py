"""Ablations as hooks: knock out heads, neurons or whole layers by zeros, a mean, or resampled values.

Each function returns a list of (hook_name, fn) pairs for `model.run_with_hooks(..., fwd_hooks=...)`
or `with model.hooks(fwd_hooks=...)`, so ablations compose by list concatenation:

    hooks = zero_ablate_heads([(9, 6), (9, 9)]) + mean_ablate_neurons([(3, 17)], reference_cache)
    loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)

What is replaced:
- a head: its output before W_O, `blocks.{l}.attn.hook_z` [batch, pos, n_heads, d_head] (a zeroed head
  writes nothing; b_O, shared by all heads, stays);
- a neuron: its activation `blocks.{l}.mlp.hook_post` [batch, pos, d_mlp];
- a layer: `blocks.{l}.hook_attn_out` or `blocks.{l}.hook_mlp_out` [batch, pos, d_model], whole.

The replacement (Chan et al. 2022, "Causal Scrubbing", discuss the three):
- zero ablation: zeros;
- mean ablation: the mean over the rows of a reference run, per position (the reference run must have
  the same length), or with `over_positions=True` over rows and positions (any length);
- resample ablation: the value of a randomly drawn reference row, drawn anew for every ablated row and
  unit (head, neuron, layer) at every forward pass; the reference run must have the same length.

`reference_cache` is any mapping from hook name to activation holding the names ablated, e.g. from
`model.run_with_cache(reference_tokens, names_filter=lambda name: name.endswith("hook_z"))`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

Hooks = list[tuple[str, Callable]]
Component = Literal["attn_out", "mlp_out"]
# A replacement: (activation, unit indices or None for the whole tensor) -> values shaped like the
# selected part of the activation (broadcastable).
_Replacement = Callable[[Tensor, list[int] | None, str], Tensor]


# ---- heads --------------------------------------------------------------------------------------


def zero_ablate_heads(heads: Iterable[tuple[int, int]]) -> Hooks:
    """Hooks that zero each (layer, head)'s output (hook_z) at every position."""
    return _unit_hooks(heads, "blocks.{}.attn.hook_z", _zeros)


def mean_ablate_heads(
    heads: Iterable[tuple[int, int]], reference_cache: Mapping[str, Tensor], over_positions: bool = False
) -> Hooks:
    """Hooks that replace each (layer, head)'s output by its mean over the reference run's rows
    (per position; over rows and positions with `over_positions`)."""
    return _unit_hooks(heads, "blocks.{}.attn.hook_z", _mean(reference_cache, over_positions))


def resample_ablate_heads(
    heads: Iterable[tuple[int, int]], reference_cache: Mapping[str, Tensor], generator: torch.Generator | None = None
) -> Hooks:
    """Hooks that replace each (layer, head)'s output, in each row, by that head's output in a random
    reference row (drawn with `generator`)."""
    return _unit_hooks(heads, "blocks.{}.attn.hook_z", _resample(reference_cache, generator))


# ---- neurons ------------------------------------------------------------------------------------


def zero_ablate_neurons(neurons: Iterable[tuple[int, int]]) -> Hooks:
    """Hooks that zero each (layer, neuron)'s activation (mlp.hook_post) at every position."""
    return _unit_hooks(neurons, "blocks.{}.mlp.hook_post", _zeros)


def mean_ablate_neurons(
    neurons: Iterable[tuple[int, int]], reference_cache: Mapping[str, Tensor], over_positions: bool = False
) -> Hooks:
    """Hooks that replace each (layer, neuron)'s activation by its mean over the reference run's rows."""
    return _unit_hooks(neurons, "blocks.{}.mlp.hook_post", _mean(reference_cache, over_positions))


def resample_ablate_neurons(
    neurons: Iterable[tuple[int, int]], reference_cache: Mapping[str, Tensor], generator: torch.Generator | None = None
) -> Hooks:
    """Hooks that replace each (layer, neuron)'s activation, in each row, by its value in a random reference row."""
    return _unit_hooks(neurons, "blocks.{}.mlp.hook_post", _resample(reference_cache, generator))


# ---- whole layers -------------------------------------------------------------------------------


def zero_ablate_layers(layers: Iterable[int], component: Component) -> Hooks:
    """Hooks that zero the attention ("attn_out") or MLP ("mlp_out") output of each layer."""
    return _layer_hooks(layers, component, _zeros)


def mean_ablate_layers(
    layers: Iterable[int], component: Component, reference_cache: Mapping[str, Tensor], over_positions: bool = False
) -> Hooks:
    """Hooks that replace each layer's attn_out or mlp_out by its mean over the reference run's rows."""
    return _layer_hooks(layers, component, _mean(reference_cache, over_positions))


def resample_ablate_layers(
    layers: Iterable[int],
    component: Component,
    reference_cache: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
) -> Hooks:
    """Hooks that replace each layer's attn_out or mlp_out, in each row, by a random reference row's."""
    return _layer_hooks(layers, component, _resample(reference_cache, generator))


# ---- machinery ----------------------------------------------------------------------------------


def _unit_hooks(units: Iterable[tuple[int, int]], template: str, replacement: _Replacement) -> Hooks:
    """One hook per layer, replacing the listed units (axis 2 of the activation)."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, unit in units:
        by_layer[int(layer)].append(int(unit))
    return [(template.format(layer), _replacing_hook(sorted(set(idx)), replacement)) for layer, idx in by_layer.items()]


def _layer_hooks(layers: Iterable[int], component: Component, replacement: _Replacement) -> Hooks:
    if component not in ("attn_out", "mlp_out"):
        raise ValueError(f"component must be 'attn_out' or 'mlp_out', got {component!r}.")
    return [(f"blocks.{int(layer)}.hook_{component}", _replacing_hook(None, replacement)) for layer in layers]


def _replacing_hook(units: list[int] | None, replacement: _Replacement):
    def hook(activation: Tensor, hook) -> Tensor:
        if units is not None and units[-1] >= activation.shape[2]:
            raise IndexError(
                f"{hook.name} has {activation.shape[2]} units on axis 2 but index {units[-1]} was asked to be ablated."
            )
        ablated = activation.clone()
        if units is None:
            ablated[:] = replacement(activation, None, hook.name)
        else:
            ablated[:, :, units] = replacement(activation, units, hook.name)
        return ablated

    return hook


def _zeros(activation: Tensor, units: list[int] | None, name: str) -> Tensor:
    return torch.zeros((), dtype=activation.dtype, device=activation.device)


def _reference(cache: Mapping[str, Tensor], name: str, activation: Tensor, same_length: bool) -> Tensor:
    if name not in cache:
        raise KeyError(f"The reference cache has no {name!r}; include it in the names_filter of run_with_cache.")
    reference = cache[name].to(activation.device, activation.dtype)
    if reference.ndim != activation.ndim or reference.shape[2:] != activation.shape[2:]:
        raise ValueError(
            f"Reference {name} has shape {tuple(reference.shape)}, incompatible with the activation "
            f"{tuple(activation.shape)}; cache the reference run with its batch axis (no remove_batch_dim)."
        )
    if same_length and reference.shape[1] != activation.shape[1]:
        raise ValueError(
            f"Reference {name} has {reference.shape[1]} positions but the ablated run has {activation.shape[1]}; "
            "use a reference batch of the same length, or mean ablation with over_positions=True."
        )
    return reference


def _mean(cache: Mapping[str, Tensor], over_positions: bool) -> _Replacement:
    def mean(activation: Tensor, units: list[int] | None, name: str) -> Tensor:
        reference = _reference(cache, name, activation, same_length=not over_positions)
        reference = reference if units is None else reference[:, :, units]
        return reference.mean(dim=(0, 1) if over_positions else 0, keepdim=True)

    return mean


def _resample(cache: Mapping[str, Tensor], generator: torch.Generator | None) -> _Replacement:
    def resample(activation: Tensor, units: list[int] | None, name: str) -> Tensor:
        reference = _reference(cache, name, activation, same_length=True)
        n_rows, batch = reference.shape[0], activation.shape[0]
        device = generator.device if generator is not None else torch.device("cpu")
        if units is None:  # one reference row per ablated row
            rows = torch.randint(n_rows, (batch,), generator=generator, device=device).to(reference.device)
            return reference[rows]
        rows = torch.randint(n_rows, (batch, len(units)), generator=generator, device=device).to(reference.device)
        picked = reference[:, :, units]  # [n_rows, pos, n_units, ...]
        # rows[b, u] picks the reference row for batch row b and unit u: result [batch, n_units, pos, ...].
        chosen = picked[rows, :, torch.arange(len(units), device=reference.device)]
        return chosen.movedim(1, 2)

    return resample

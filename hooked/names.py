"""Names and indices shared by every layer: hook-name shorthand, name filters, `Slice`, and which axis is
"position".

The lowest layer beside the config: nothing here knows about modules or models. `get_act_name`
follows TransformerLens's shorthand (its `utils.get_act_name`), and `hooked.utils` re-exports all three.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

_ATTN_ACTS = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_NORM_ACTS = {"scale", "normalized"}
_TOP_LEVEL = {"embed", "pos_embed", "tokens"}
_ACT_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from shorthand: ("k", 6, "a") -> "blocks.6.attn.hook_k", "pre5" -> "blocks.5.mlp.hook_pre",
    "scale4ln1" -> "blocks.4.ln1.hook_scale", ("scale",) -> "ln_final.hook_scale", "embed" -> "hook_embed"."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or layer_type
    name = _ACT_ALIASES.get(name, name)
    if name in _TOP_LEVEL:
        return f"hook_{name}"
    if layer is None:
        if name in _NORM_ACTS:
            return f"ln_final.hook_{name}"
        raise ValueError(f"Activation {name!r} lives in a block: give a layer, e.g. get_act_name({name!r}, 0).")
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    if name in _NORM_ACTS and not layer_type:
        raise ValueError(f"Activation {name!r} needs its norm: layer_type='ln1' or 'ln2'.")
    prefix = f"blocks.{layer}." + (f"{layer_type}." if layer_type else "")
    return f"{prefix}hook_{name}"


class Slice:
    """A reusable index along one axis: None (everything), an int (that index, axis dropped),
    a (start, stop[, step]) tuple, a slice, or a list/array/tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        if isinstance(input_slice, tuple):
            input_slice = slice(*input_slice)
        elif input_slice is None:
            input_slice = slice(None)
        elif isinstance(input_slice, (list, np.ndarray)):
            input_slice = torch.as_tensor(input_slice)
        self.slice = input_slice

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = self.slice.to(tensor.device) if isinstance(self.slice, Tensor) else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> Tensor:
        """The positions this slice selects out of range(max_ctx)."""
        if isinstance(self.slice, int):
            return torch.tensor([self.slice])
        if isinstance(self.slice, Tensor):
            return self.slice
        if max_ctx is None:
            raise ValueError("max_ctx is needed to list the indices of a slice.")
        return torch.arange(max_ctx)[self.slice]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r})"


NamesFilter = None | str | Sequence[str] | Callable[[str], bool]  # which hook points: see name_predicate


def name_predicate(names: NamesFilter) -> Callable[[str], bool]:
    """A predicate on hook names from a filter: None (every name), a name, a list of names, or a predicate."""
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


def position_axis(name: str | None, tensor: Tensor) -> int:
    """The position axis of the activation a hook point named `name` carries: attention patterns and
    scores are indexed by query position (their axis -2); everything else has [batch, pos, ...]."""
    if name is not None and (name.endswith("hook_pattern") or name.endswith("hook_attn_scores")):
        return -2
    return 1 if tensor.ndim >= 2 else 0

"""The activations of one run, keyed by hook name: lookup by shorthand, and whole-cache operations.

`HookedRootModule.run_with_cache` returns an instance of its `cache_class`: this mapping for any
module tree, and `ActivationCache` (which adds the residual-stream analysis) for a transformer.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from hooked.names import Slice, get_act_name


class CacheMapping(Mapping):
    """A read-only mapping from hook name to tensor.

    `cache["pattern", 0]`, `cache["resid_pre", -1]`, `cache["scale"]` and `cache["normalized", 1, "ln2"]`
    expand with `utils.get_act_name`; negative layers count from the end.
    """

    def __init__(self, cache_dict: dict[str, Tensor], model, has_batch_dim: bool = True) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # ---- mapping behaviour -------------------------------------------------------------------

    def _key(self, key: str | tuple) -> str:
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        name, *rest = key
        layer = rest[0] if rest else None
        if isinstance(layer, int) and layer < 0:
            layer += self.model.cfg.n_layers
        return get_act_name(name, layer, rest[1] if len(rest) > 1 else None)

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            close = difflib.get_close_matches(name, list(self.cache_dict), n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else " Was it excluded by names_filter?"
            raise KeyError(f"{name!r} is not in this cache ({len(self.cache_dict)} entries).{hint}")
        return self.cache_dict[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __contains__(self, key: Any) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"{type(self).__name__} with keys {list(self.cache_dict)}"

    # ---- whole-cache operations --------------------------------------------------------------

    def to(self, device: torch.device | str, move_model: bool = False) -> CacheMapping:
        """Move every tensor (in place) and return self."""
        self.cache_dict = {name: t.to(device) for name, t in self.cache_dict.items()}
        if move_model:
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> CacheMapping:
        """Drop the batch axis (the run must have had batch size 1). In place; returns self."""
        if not self.has_batch_dim:
            return self
        sizes = {t.shape[0] for name, t in self.cache_dict.items() if t.ndim and self._batched(name)}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim needs batch size 1, but the cache has batch sizes {sorted(sizes)}.")
        self.cache_dict = {name: t[0] if self._batched(name) else t for name, t in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def _batched(self, name: str) -> bool:
        """Whether the entry's first axis is the batch (not, e.g., the tokens routed to an expert)."""
        hook = self.model.hook_dict.get(name.removesuffix("_grad")) if hasattr(self.model, "hook_dict") else None
        return getattr(hook, "batch_axis", True)

    def _routed_rows(self, name: str, batch_slice: Slice) -> Tensor:
        """The rows of an expert's entry that come from the batch rows `batch_slice` keeps: its rows are the
        tokens routed to it in (batch, pos) order, which the cached expert indices tell apart."""
        block, expert = name.split(".mlp.experts.")
        indices_name = f"{block}.mlp.hook_expert_indices"
        if indices_name not in self.cache_dict:
            raise ValueError(f"Slicing {name!r} by batch row needs {indices_name!r} in the cache (see names_filter).")
        routed = (self.cache_dict[indices_name] == int(expert.split(".")[0])).any(-1)  # [batch, pos]
        rows = torch.arange(routed.shape[0], device=routed.device)[:, None].expand_as(routed)[routed]
        kept = batch_slice.apply(torch.arange(routed.shape[0], device=routed.device), dim=0).reshape(-1)
        return torch.isin(rows, kept)

    def apply_slice_to_batch_dim(self, batch_slice: Slice | int | tuple | list | None) -> CacheMapping:
        """A new cache holding only some rows of the batch (an int drops the batch axis)."""
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        if not self.has_batch_dim:
            raise ValueError("This cache has no batch axis to slice.")
        sliced = {
            name: batch_slice.apply(t, dim=0) if self._batched(name) else t[self._routed_rows(name, batch_slice)]
            for name, t in self.cache_dict.items()
        }
        return type(self)(sliced, self.model, has_batch_dim=not isinstance(batch_slice.slice, int))

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Globally enable or disable autograd (as TransformerLens's helper did). Cached tensors are
        detached either way; this only governs computations you run on them."""
        torch.set_grad_enabled(mode)

"""Named, invertible transforms from a checkpoint tensor to a canonical parameter.

Each returns a view of its source whenever the layout allows, so a loaded model holds one copy of
the weights and keeps Hugging Face's memory layout (which the fast path multiplies directly).
"""

from __future__ import annotations

import einops
from torch import Tensor

from hooked.config import HookedTransformerConfig


class Copy:
    """The tensor as stored."""

    def __init__(self, key: str) -> None:
        self.key = key

    def format(self, layer: int) -> Copy:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__, key=self.key.format(i=layer))
        return clone

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class Transpose(Copy):
    """[out, in] (nn.Linear) -> [in, out] (x @ W)."""

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return tensor.T


class Heads(Copy):
    """An einops rearrangement whose axis sizes name config fields, then an optional index on the
    first output axis (to pick q, k or v out of a fused projection):
    `Heads("...c_attn.weight", "m (three n h) -> three n m h", select=0, three=3, n="n_heads")`."""

    def __init__(self, key: str, pattern: str, select: int | None = None, **axes: str | int) -> None:
        super().__init__(key)
        self.pattern, self.select, self.axes = pattern, select, axes

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        sizes = {axis: getattr(cfg, size) if isinstance(size, str) else size for axis, size in self.axes.items()}
        out = einops.rearrange(tensor, self.pattern, **sizes)
        return out if self.select is None else out[self.select]

    def __repr__(self) -> str:
        return f"Heads({self.key!r}, {self.pattern!r}, select={self.select})"

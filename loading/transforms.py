"""Named, invertible transforms from a checkpoint tensor to a canonical parameter.

Each returns a view of its source whenever the layout allows, so a loaded model holds one copy of
the weights and keeps Hugging Face's memory layout (which the fast path multiplies directly).
"""

from __future__ import annotations

import math

import einops
import torch
from torch import Tensor

from hooked.config import HookedTransformerConfig


class Transform:
    """One checkpoint tensor (`key`, with `{i}` for the layer) turned into one canonical parameter.
    Subclasses define `__call__(tensor, cfg)`; this base returns the tensor as stored."""

    others: tuple[str, ...] = ()  # further checkpoint tensors it reads (Product), passed after `cfg`

    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.others)

    def format(self, layer: int) -> Transform:
        clone = object.__new__(type(self))
        others = tuple(key.format(i=layer) for key in self.others)
        clone.__dict__.update(self.__dict__, key=self.key.format(i=layer), others=others)
        return clone

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class Copy(Transform):
    """The tensor as stored."""


class Transpose(Transform):
    """[out, in] (nn.Linear) -> [in, out] (x @ W)."""

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return tensor.T


class Heads(Transform):
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


class HeadsCopied(Heads):
    """Heads, then copied into the memory layout attention multiplies by directly (weights: the fused
    [n * h, m] matrix; biases: contiguous). For fused projections that interleave q, k and v within each
    head (GPT-NeoX, BLOOM), where a view would cost a copy on every forward instead of one at load."""

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        out = super().__call__(tensor, cfg)
        if out.ndim == 3:  # [n, m, h] stored as [n, h, m]
            return out.transpose(1, 2).contiguous().transpose(1, 2)
        return out.contiguous()


class Split(Transform):
    """Part `index` of a tensor whose first axis concatenates parts of the given sizes (each a product of
    config fields, "n_key_value_heads*d_head"), then an optional einops pattern with axes as in Heads:
    `Split("...qkv_proj.weight", ("n_heads*d_head", "n_key_value_heads*d_head", ...), 1, "(n h) m -> n m h", n=...)`.
    A view of the source."""

    def __init__(self, key: str, sizes: tuple[str, ...], index: int, pattern: str | None = None, **axes: str | int):
        super().__init__(key)
        self.sizes, self.index, self.pattern, self.axes = sizes, index, pattern, axes

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        lengths = [math.prod(getattr(cfg, field) for field in size.split("*")) for size in self.sizes]
        if sum(lengths) != tensor.shape[0]:
            implied = f"{' + '.join(self.sizes)} = {sum(lengths)}"
            raise ValueError(f"{self.key} has {tensor.shape[0]} rows, but the config implies {implied}.")
        part = tensor.split(lengths, dim=0)[self.index]
        if self.pattern is None:
            return part
        sizes = {axis: getattr(cfg, size) if isinstance(size, str) else size for axis, size in self.axes.items()}
        return einops.rearrange(part, self.pattern, **sizes)

    def __repr__(self) -> str:
        return f"Split({self.key!r}, {self.sizes}, {self.index}, {self.pattern!r})"


class PlusOne(Transform):
    """w + 1, for RMSNorm weights stored as offsets from one (Gemma's norms multiply by 1 + w). A copy."""

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return (tensor.float() + 1.0).to(tensor.dtype)


class RowsFrom(Transform):
    """Rows `start:` of the tensor (a view): OPT's learned positions begin at row 2 of its table."""

    def __init__(self, key: str, start: int) -> None:
        super().__init__(key)
        self.start = start

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return tensor[self.start :]


class Pick(Transform):
    """`tensor[index]` (a view), transposed with `transpose`: one expert's matrix out of a stacked
    [n_experts, ...] tensor, `Pick("...experts.down_proj", (e,))`, or every other column of an interleaved
    one, `Pick("...gate_up_proj", (e, slice(None), slice(0, None, 2)))`."""

    def __init__(self, key: str, index: tuple, transpose: bool = False) -> None:
        super().__init__(key)
        self.index, self.transpose = index, transpose

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        out = tensor[self.index]
        return out.T if self.transpose else out

    def __repr__(self) -> str:
        return f"Pick({self.key!r}, {self.index}, transpose={self.transpose})"


class ZerosLike(Transform):
    """Zeros shaped like the tensor: the bias of a LayerNorm that has none (Cohere's), read off its weight, for
    the canonical LayerNorm's bias (adding zeros changes no number). A new tensor."""

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        return torch.zeros_like(tensor)


class GroupedQKV(Transform):
    """Part `part` (0 queries, 1 keys, 2 values) of a fused projection laid out per key/value group as the
    group's query heads, then its key head, then its value head (Falcon's new decoder architecture):
    [n_heads, d_in, d_head] for the queries (head g * n_key_value_groups + j is group g's j-th), else
    [n_key_value_heads, d_in, d_head]; biases without d_in. Copied into the fused layout attention uses."""

    def __init__(self, key: str, part: int) -> None:
        super().__init__(key)
        self.part = part

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig) -> Tensor:
        groups = cfg.n_key_value_groups
        if tensor.ndim == 1:
            parts = einops.rearrange(tensor, "(k s h) -> k s h", k=cfg.n_key_value_heads, s=groups + 2)
            picked = parts[:, :groups].flatten(0, 1) if self.part == 0 else parts[:, groups + self.part - 1]
            return picked.contiguous()
        parts = einops.rearrange(tensor, "(k s h) m -> k s m h", k=cfg.n_key_value_heads, s=groups + 2)
        picked = parts[:, :groups].flatten(0, 1) if self.part == 0 else parts[:, groups + self.part - 1]
        return picked.transpose(1, 2).contiguous().transpose(1, 2)  # [n, m, h] stored as the fused [n, h, m]

    def __repr__(self) -> str:
        return f"GroupedQKV({self.key!r}, {self.part})"


class Product(Transform):
    """The product of two stored matrices (`pattern`: einops' einsum of `key` and `other`), folding a linear
    map without bias into its neighbour: OPT-350m's project_in into W_E, project_out into W_U. A new tensor,
    not a view: its rows agree with applying the two maps in turn to float rounding (~1e-7)."""

    def __init__(self, key: str, other: str, pattern: str) -> None:
        super().__init__(key)
        self.others, self.pattern = (other,), pattern

    def __call__(self, tensor: Tensor, cfg: HookedTransformerConfig, other: Tensor) -> Tensor:
        return einops.einsum(tensor, other, self.pattern)

    def __repr__(self) -> str:
        return f"Product({self.key!r}, {self.others[0]!r}, {self.pattern!r})"

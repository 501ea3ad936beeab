"""Small helpers users reach for beside the model: hook-name shorthand, losses, slicing."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
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


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy (computed in float32). With a mask, the mean is over pairs of real tokens;
    per-token losses at padded positions are left as computed (mask them yourself)."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    if per_token:
        return losses
    if attention_mask is None:
        return losses.mean()
    mask = attention_mask.to(logits.device)
    valid = (mask[:, 1:] * mask[:, :-1]).to(losses.dtype)
    return (losses * valid).sum() / valid.sum()


def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
) -> Tensor:
    """Fraction of positions whose argmax is the next token."""
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


def to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16
    return np.array(tensor)


def remove_batch_dim(tensor: Tensor) -> Tensor:
    """Drop a leading batch axis of size 1 (anything else is returned unchanged)."""
    return tensor[0] if tensor.ndim and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left n x n x ... corner of a tensor (or of a FactoredMatrix's product)."""
    from hooked.factored_matrix import FactoredMatrix

    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(None, n) for _ in range(tensor.ndim))]


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

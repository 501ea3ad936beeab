"""Normalization layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019).

Both expose the normalizing scale and the normalized (pre-weight) activation as hook points, so
analyses can apply a cached layer's norm to a stack of residual components. The formula is always
written out (no fused kernel) so that a hooked and an unhooked run compute the same bits.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.hook_points import HookPoint


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * w + b, computed in float32 as torch's layer_norm does."""

    def __init__(self, d_model: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model)) if bias else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        dtype = x.dtype
        x = x.float()  # statistics in float32, as torch's fused layer_norm accumulates them
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized((x / scale).to(dtype))
        out = normalized * self.w
        return out + self.b if self.b is not None else out


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, in float32, cast back before the weight (as Hugging Face's Llama)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized((x / scale).to(dtype))
        return self.w * normalized


def make_norm(normalization_type: str, d_model: int, eps: float) -> nn.Module:
    if normalization_type == "LN":
        return LayerNorm(d_model, eps)
    if normalization_type == "RMS":
        return RMSNorm(d_model, eps)
    raise ValueError(f"Unknown normalization_type {normalization_type!r}; expected 'LN' or 'RMS'.")

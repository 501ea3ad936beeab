"""Normalization layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019), and the
variants some families use: LayerNorm without parameters (OLMo), RMSNorm without a weight
(TransformerLens's "RMSPre"), and the query/key norms of
attention (one weight shared by all heads, a weight per head, or one norm over all heads at once).

Every norm exposes the normalizing scale and the normalized (pre-weight) activation as hook points, so
analyses can apply a cached layer's norm to a stack of residual components. The formula is always
written out (no fused kernel) so that a hooked and an unhooked run compute the same bits.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint, for_editing


class LayerNormPre(nn.Module):
    """(x - mean) / sqrt(var + eps), with no weight or bias (OLMo), computed in float32 as torch's layer_norm does."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        dtype = x.dtype
        x = x.float()  # statistics in float32, as torch's fused layer_norm accumulates them
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale(for_editing(self.hook_scale, (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()))
        return self.hook_normalized((x / scale).to(dtype))


class LayerNorm(LayerNormPre):
    """(x - mean) / sqrt(var + eps) * w + b: LayerNormPre, then the weight and (optional) bias."""

    def __init__(self, d_model: int, eps: float, bias: bool = True) -> None:
        super().__init__(eps)
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        out = super().forward(x) * self.w
        return out + self.b if self.b is not None else out


class RMSNormPre(nn.Module):
    """x / sqrt(mean(x^2) + eps), with no weight, in float32 and cast back (TransformerLens's RMSNormPre)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale(for_editing(self.hook_scale, (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()))
        return self.hook_normalized((x / scale).to(dtype))


class RMSNorm(RMSNormPre):
    """x / sqrt(mean(x^2) + eps) * w: RMSNormPre, then the weight applied after the cast back (as Hugging
    Face's Llama)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__(eps)
        self.w = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.w * super().forward(x)


class PerHeadLayerNorm(LayerNormPre):
    # Same as LayerNorm without bias except: each head has its own weight (StableLM 2's query/key norms).
    def __init__(self, n_heads: int, d_head: int, eps: float) -> None:
        super().__init__(eps)
        # One [d_head] weight per head, as checkpoints store them; stacked on use (a few hundred numbers).
        self.w = nn.ParameterList([nn.Parameter(torch.ones(d_head)) for _ in range(n_heads)])

    def forward(self, x: Float[Tensor, "batch pos n_heads d_head"]) -> Float[Tensor, "batch pos n_heads d_head"]:
        return super().forward(x) * torch.stack(tuple(self.w))


class AllHeadsRMSNorm(RMSNorm):
    # Same as RMSNorm except: it normalizes all heads together (OLMo 2's query/key norms), so its weight is
    # [n_heads * d_head] and its hooks see the heads flattened: hook_scale [batch, pos, 1],
    # hook_normalized [batch, pos, n_heads * d_head].
    def forward(self, x: Float[Tensor, "batch pos n_heads d_head"]) -> Float[Tensor, "batch pos n_heads d_head"]:
        return super().forward(x.flatten(-2)).unflatten(-1, x.shape[-2:])


def make_norm(normalization_type: str | None, d_model: int, eps: float) -> nn.Module:
    """The norm `normalization_type` names; None gives the identity (no parameters and no hook points)."""
    if normalization_type is None:
        return nn.Identity()
    if normalization_type == "LN":
        return LayerNorm(d_model, eps)
    if normalization_type == "LNPre":
        return LayerNormPre(eps)
    if normalization_type == "RMS":
        return RMSNorm(d_model, eps)
    if normalization_type == "RMSPre":
        return RMSNormPre(eps)
    raise ValueError(
        f"Unknown normalization_type {normalization_type!r}; expected 'LN', 'LNPre', 'RMS', 'RMSPre' or None."
    )


def make_qk_norm(cfg: HookedTransformerConfig, n_heads: int) -> nn.Module:
    """The norm applied to queries (n_heads) or keys (n_key_value_heads) of shape [batch, pos, n_heads, d_head]."""
    if cfg.qk_norm == "all_heads":
        if cfg.normalization_type != "RMS":
            raise ValueError("qk_norm='all_heads' is implemented for RMSNorm only (OLMo 2).")
        return AllHeadsRMSNorm(n_heads * cfg.d_head, cfg.eps)
    if cfg.qk_norm == "per_head":
        if cfg.normalization_type != "LN":
            raise ValueError("qk_norm='per_head' is implemented for LayerNorm only (StableLM 2).")
        return PerHeadLayerNorm(n_heads, cfg.d_head, cfg.eps)
    if cfg.normalization_type == "LN":
        return LayerNorm(cfg.d_head, cfg.eps, bias=cfg.qk_norm_bias)
    return RMSNorm(cfg.d_head, cfg.eps)

"""Token embedding, learned absolute positions, rotary positions (Su et al. 2021) and unembedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint


class Embed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.W_pos)


class Unembed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab)) if cfg.unembed_bias else None
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        # W_U is stored [d_model, d_vocab] as users expect; .T is a free view for F.linear.
        return self.hook_out(F.linear(self.hook_in(x), self.W_U.T, self.b_U))


class Rotary(nn.Module):
    """Computes the cos/sin tables for rotary embeddings from token positions.

    Frequencies follow Hugging Face's `modeling_rope_utils` (default, "linear" and "llama3" rope
    types). They are recomputed on every call (a few hundred numbers), so the module holds no
    buffers and a model built on the meta device needs no special handling.
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        self.base = cfg.rotary_base
        self.scaling = cfg.rope_scaling

    def inv_freq(self, device: torch.device) -> Float[Tensor, " half_rotary_dim"]:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float() / self.rotary_dim
        inv_freq = 1.0 / (self.base**exponents)
        s = self.scaling
        if s is None:
            return inv_freq
        if s.kind == "linear":
            return inv_freq / s.factor
        # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        wavelen = 2 * math.pi / inv_freq
        low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)

    def forward(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos rotary_dim"], Float[Tensor, "batch pos rotary_dim"]]:
        # Angles in float32 (positions up to n_ctx lose precision in half types), then cast.
        freqs = positions[..., None].float() * self.inv_freq(positions.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(
    x: Float[Tensor, "batch pos n_heads d_head"], cos: Float[Tensor, "batch pos r"], sin: Float[Tensor, "batch pos r"]
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Rotate the first r dims of each head as pairs (i, i + r/2) (the GPT-NeoX/Llama layout)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    first, second = rot[..., : r // 2], rot[..., r // 2 :]
    rotated_half = torch.cat((-second, first), dim=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = rot * cos + rotated_half * sin
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated

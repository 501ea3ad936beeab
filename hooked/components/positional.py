"""Positions inside attention: rotary embeddings (their cos/sin tables and the two rotation layouts) and
ALiBi's per-head slopes.

Rotary: Su et al. 2021 (RoFormer); the frequencies and scaling rules follow Hugging Face's
`modeling_rope_utils`. ALiBi: Press et al. 2021, as BLOOM's reference computes it.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked.config import HookedTransformerConfig


class Rotary(nn.Module):
    """Computes the cos/sin tables for rotary embeddings from token positions.

    Frequencies follow Hugging Face's `modeling_rope_utils` (default, "linear", "llama3", "yarn",
    "longrope" and "dynamic" rope types). They are recomputed on every call (a few hundred numbers), so
    the module holds no buffers and a model built on the meta device needs no special handling. The
    tables are laid out for `apply_rotary` (each angle twice: [f0, f1, ..., f0, f1, ...]) or, with
    `rotary_adjacent_pairs`, for `apply_rotary_adjacent` ([f0, f0, f1, f1, ...]).
    `local=True` gives the tables of a model's local layers (their own base, no scaling: Gemma 3).

    "longrope" and "dynamic" frequencies depend on the sequence length, which is transformers' rule: the
    largest position in the call plus one, over the whole batch (with a key-value cache, the new tokens'
    keys are rotated for the length so far, the cached ones stay as they were). longrope switches from
    `short_factor` to `long_factor` beyond original_max_position_embeddings; dynamic raises the base (NTK
    scaling) beyond it. transformers' dynamic module also remembers the longest length it has seen (until
    a call shorter than the original context resets it); this one depends on the call alone, as a freshly
    loaded transformers model does, and as its `generate` does from a prompt within the original context.
    """

    def __init__(self, cfg: HookedTransformerConfig, local: bool = False) -> None:
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        self.base = cfg.rotary_base_local if local else cfg.rotary_base
        self.scaling = None if local else cfg.rope_scaling
        self.adjacent_pairs = cfg.rotary_adjacent_pairs

    def inv_freq(self, device: torch.device, seq_len: int = 0) -> Float[Tensor, " half_rotary_dim"]:
        """The frequencies for a sequence of `seq_len` tokens (only longrope and dynamic look at it)."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float() / self.rotary_dim
        s = self.scaling
        if s is not None and s.kind == "longrope":
            long = seq_len > s.original_max_position_embeddings
            divisors = torch.tensor(s.long_factor if long else s.short_factor, dtype=torch.float32, device=device)
            return 1.0 / (divisors * self.base**exponents)
        if s is not None and s.kind == "dynamic" and seq_len > s.original_max_position_embeddings:
            # NTK: the base grows with the length. In float32 tensors, as transformers computes it for a length.
            length = torch.tensor(seq_len, device=device)
            ratio = s.factor * length / s.original_max_position_embeddings - (s.factor - 1)
            base = self.base * ratio ** (self.rotary_dim / (self.rotary_dim - 2))
            return 1.0 / (base**exponents)
        inv_freq = 1.0 / (self.base**exponents)
        if s is None or s.kind == "dynamic":
            return inv_freq
        if s.kind == "linear":
            return inv_freq / s.factor
        if s.kind == "yarn":
            return self._yarn(exponents)
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

    def _yarn(self, exponents: Tensor) -> Tensor:
        """YaRN (Peng et al. 2023): frequencies that turn fewer than beta_slow times over the original
        context are divided by factor, those that turn more than beta_fast times are kept, and a linear
        ramp over the dims between blends the two."""
        s, dim = self.scaling, self.rotary_dim
        pos_freqs = self.base**exponents
        kept, divided = 1.0 / pos_freqs, 1.0 / (s.factor * pos_freqs)

        def dim_of(rotations: float) -> float:  # the dim whose frequency turns `rotations` times
            turns = s.original_max_position_embeddings / (rotations * 2 * math.pi)
            return (dim * math.log(turns)) / (2 * math.log(self.base))

        low, high = dim_of(s.beta_fast), dim_of(s.beta_slow)
        if s.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # transformers' guard against a zero-width ramp
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1).to(exponents.device)
        keep = 1 - ramp
        return divided * (1 - keep) + kept * keep

    def forward(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos rotary_dim"], Float[Tensor, "batch pos rotary_dim"]]:
        s = self.scaling
        by_length = s is not None and s.kind in ("longrope", "dynamic") and positions.numel()
        seq_len = int(positions.max()) + 1 if by_length else 0
        # Angles in float32 (positions up to n_ctx lose precision in half types), then cast.
        freqs = positions[..., None].float() * self.inv_freq(positions.device, seq_len)
        angles = freqs.repeat_interleave(2, dim=-1) if self.adjacent_pairs else torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if s is not None and s.attention_factor != 1.0:  # yarn, longrope: scales q.k by attention_factor**2
            cos, sin = cos * s.attention_factor, sin * s.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(
    x: Float[Tensor, "batch pos n_heads d_head"], cos: Float[Tensor, "batch pos r"], sin: Float[Tensor, "batch pos r"]
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Rotate the first r dims of each head as pairs (i, i + r/2) (the GPT-NeoX/Llama layout)."""
    r = cos.shape[-1]
    partial = r < x.shape[-1]  # (slices and unsqueezes rather than indexing: this runs twice per layer per step)
    rot = x[..., :r] if partial else x
    first, second = rot.split(r // 2, dim=-1)
    rotated = rot * cos.unsqueeze(2) + torch.cat((-second, first), dim=-1) * sin.unsqueeze(2)
    return torch.cat((rotated, x[..., r:]), dim=-1) if partial else rotated


def apply_rotary_adjacent(
    x: Float[Tensor, "batch pos n_heads d_head"], cos: Float[Tensor, "batch pos r"], sin: Float[Tensor, "batch pos r"]
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Rotate the first r dims of each head as adjacent pairs (2i, 2i + 1) (the GPT-J layout)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    rotated_pairs = torch.stack((-rot[..., 1::2], rot[..., ::2]), dim=-1).flatten(-2)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = rot * cos + rotated_pairs * sin
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def alibi_slopes(n_heads: int) -> Float[Tensor, " n_heads"]:
    """Each head's ALiBi slope: a geometric sequence starting at 2^(-8/n) for n a power of two, and for
    other head counts the closest power of two's sequence followed by every other slope of the next
    (Press et al. 2021; computed in float32 as BLOOM's reference does)."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != n_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        n_extra = min(closest, n_heads - closest)
        slopes = torch.cat([slopes, torch.pow(extra_base, torch.arange(1, 1 + 2 * n_extra, 2, dtype=torch.int32))])
    return slopes

"""Multi-head, grouped-query and multi-query causal self-attention.

Weights are stored in the TransformerLens layout users index into (`W_Q[head]` is [d_model, d_head]),
but laid out in memory as Hugging Face's fused projections, so the unhooked path runs the same
single matmuls (`_fused`) and torch's `scaled_dot_product_attention`. When a hook needs the attention
scores or pattern, the explicit path computes them; when a hook needs per-head results, they are
computed too. A hook that leaves its activation unchanged leaves the output bit-identical.

Options the config states as facts are small parts of `Attention`: query/key norms (`q_norm`,
`k_norm`, applied after `hook_q`/`hook_k` and before rotary), clamping of q/k/v (`clip_qkv`), rotary
pair layout, no rotary at all on a rotary model's NoPE layers (`rotates=False`). Variants that change the
scores are subclasses, chosen once by `make_attention`: `SoftcapAttention` (Gemma 2), `AlibiAttention`
(BLOOM) and `SinkAttention` (GPT-OSS). SDPA cannot express them, so they always take the explicit path.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooked.components.kv_cache import LayerKV
from hooked.components.linear import linear
from hooked.components.norms import make_qk_norm
from hooked.components.positional import Rotary, alibi_slopes, apply_rotary, apply_rotary_adjacent
from hooked.config import AttnType, HookedTransformerConfig
from hooked.factored_matrix import FactoredMatrix
from hooked.hook_points import HookPoint, for_editing, listening, may_edit, wants_gradient

RotaryTables = tuple[Tensor, Tensor]  # (cos, sin), from positional.Rotary


def head_weight(n_heads: int, d_in: int, d_out: int) -> nn.Parameter:
    """An empty [n_heads, d_in, d_out] weight laid out in memory as a fused [n_heads * d_out, d_in] matrix."""
    fused = torch.empty(n_heads * d_out, d_in)
    return nn.Parameter(einops.rearrange(fused, "(n h) m -> n m h", n=n_heads))


def _fused(w: Float[Tensor, "n_heads d_in d_head"]) -> Float[Tensor, "n_heads_d_head d_in"]:
    """[n, d_in, h] -> the [n * h, d_in] matrix F.linear takes; a view when the layout is fused."""
    return w.permute(0, 2, 1).reshape(-1, w.shape[1])


def _project(x: Tensor, w: Tensor, b: Tensor | None) -> Float[Tensor, "batch pos n_heads d_head"]:
    """x @ W (+ b) per head; x is shared [batch, pos, d_model] or per head [batch, pos, n_heads, d_model]."""
    if x.ndim == 3:
        out = linear(x, _fused(w), None if b is None else b.flatten())
        return out.unflatten(-1, (w.shape[0], w.shape[2]))
    out = torch.einsum("bpnm,nmh->bpnh", x, w)
    return out + b if b is not None else out


class Attention(nn.Module):
    always_explicit = False  # True for variants whose scores SDPA cannot compute

    def __init__(
        self, cfg: HookedTransformerConfig, attn_type: AttnType = "global", scale: float = 0.0, rotates: bool = True
    ) -> None:
        super().__init__()
        H, Hkv, D, Dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.attn_type = attn_type  # "local": the model gives this layer a sliding-window mask
        self.scale = scale or cfg.attn_scale  # scores are divided by it (cfg.layer_attn_scale of its layer)
        self.use_sdpa = True  # model.set_attn_implementation switches it
        self.W_Q = head_weight(H, D, Dh)
        self.W_K = head_weight(Hkv, D, Dh)
        self.W_V = head_weight(Hkv, D, Dh)
        self.W_O = nn.Parameter(einops.rearrange(torch.empty(D, H * Dh), "m (n h) -> n h m", n=H))
        qkv_bias = cfg.attn_qkv_bias
        self.b_Q = nn.Parameter(torch.zeros(H, Dh)) if qkv_bias else None
        self.b_K = nn.Parameter(torch.zeros(Hkv, Dh)) if qkv_bias else None
        self.b_V = nn.Parameter(torch.zeros(Hkv, Dh)) if qkv_bias else None
        self.b_O = nn.Parameter(torch.zeros(D)) if cfg.attn_out_bias else None

        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        grouped = (H, Hkv) if Hkv < H else None  # lets a hook's bad head index be explained
        self.hook_k = HookPoint(grouped)  # [batch, pos, n_kv_heads, d_head]
        self.hook_v = HookPoint(grouped)  # [batch, pos, n_kv_heads, d_head]
        if cfg.qk_norm is not None:
            self.q_norm = make_qk_norm(cfg, H)
            self.k_norm = make_qk_norm(cfg, Hkv)
        self.rotate = None  # a NoPE layer of a rotary model (rotates=False) ignores the tables it is given
        if cfg.positional_embedding_type == "rotary" and rotates:
            self.rotate = apply_rotary_adjacent if cfg.rotary_adjacent_pairs else apply_rotary
            self.hook_rot_q = HookPoint()  # [batch, pos, n_heads, d_head]
            self.hook_rot_k = HookPoint(grouped)  # [batch, pos, n_kv_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model]

    # ---- TransformerLens's buffers, which code built on it reads (circuit-tracer); the forward pass
    # computes masks and rotary tables from each run's positions instead, so these are for reading. ----

    @property
    def mask(self) -> Bool[Tensor, "n_ctx n_ctx"]:
        """The [n_ctx, n_ctx] causal mask (banded by the sliding window on a local layer), as TransformerLens
        kept it. Assigning one replaces what is read here; the forward pass does not use it."""
        if "_mask" in self.__dict__:
            return self.__dict__["_mask"]
        n = self.cfg.n_ctx
        mask = torch.ones(n, n, dtype=torch.bool, device=self.W_Q.device).tril()
        if self.attn_type == "local" and self.cfg.sliding_window is not None:
            mask = mask.triu(-(self.cfg.sliding_window - 1))
        return mask

    @mask.setter
    def mask(self, value: Tensor) -> None:
        self.__dict__["_mask"] = value

    @property
    def rotary_cos(self) -> Float[Tensor, "n_ctx rotary_dim"]:
        """cos of the rotary angle of every position and rotary dim (TransformerLens's buffer; read only)."""
        return self._rotary_table(0)

    @rotary_cos.setter
    def rotary_cos(self, value: Tensor) -> None:
        self.__dict__["_rotary_cos"] = value

    @property
    def rotary_sin(self) -> Float[Tensor, "n_ctx rotary_dim"]:
        """sin of the rotary angle of every position and rotary dim (TransformerLens's buffer; read only)."""
        return self._rotary_table(1)

    @rotary_sin.setter
    def rotary_sin(self, value: Tensor) -> None:
        self.__dict__["_rotary_sin"] = value

    def _rotary_table(self, which: int) -> Tensor:
        name = ("_rotary_cos", "_rotary_sin")[which]
        if name in self.__dict__:
            return self.__dict__[name]
        if self.rotate is None:
            raise AttributeError(
                f"{type(self).__name__} of a {self.cfg.positional_embedding_type!r} model has no rotary table"
                + (" (a NoPE layer)." if self.cfg.positional_embedding_type == "rotary" else ".")
            )
        local = self.attn_type == "local" and bool(self.cfg.rotary_base_local)
        positions = torch.arange(self.cfg.n_ctx, device=self.W_Q.device)[None]
        return Rotary(self.cfg, local=local)(positions, self.W_Q.dtype)[which][0]

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K^T per query head, [n_heads, d_model, d_model] (kv heads repeated for grouped-query)."""
        W_K = self.W_K.repeat_interleave(self.cfg.n_key_value_groups, dim=0)
        return FactoredMatrix(self.W_Q, W_K.mT)

    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per query head, [n_heads, d_model, d_model] (kv heads repeated for grouped-query)."""
        W_V = self.W_V.repeat_interleave(self.cfg.n_key_value_groups, dim=0)
        return FactoredMatrix(W_V, self.W_O)

    def forward(
        self,
        q_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos n_heads d_model"],
        k_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos n_kv_heads d_model"],
        v_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos n_kv_heads d_model"],
        rotary: RotaryTables | None,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`mask` None means plain causal attention; `past_kv` holds earlier positions' keys and values
        (hooks on k and v see the new positions only, as the new tokens are all that is computed)."""
        q = self.hook_q(self._clip(_project(q_input, self.W_Q, self.b_Q)))
        k = self.hook_k(self._clip(_project(k_input, self.W_K, self.b_K)))
        v = self.hook_v(self._clip(_project(v_input, self.W_V, self.b_V)))
        if self.cfg.qk_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None and self.rotate is not None:
            q = self.hook_rot_q(self.rotate(q, *rotary))
            k = self.hook_rot_k(self.rotate(k, *rotary))
        if past_kv is not None:
            k, v = past_kv.append(k, v)
        z = self.hook_z(for_editing(self.hook_z, self._attend(q, k, v, mask)))
        return self._write(z)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
    ) -> Float[Tensor, "batch pos n_heads d_head"]:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, pos, d_head]
        groups = self.cfg.n_key_value_groups
        n_q, n_k = q.shape[2], k.shape[2]
        explicit = (
            self.always_explicit
            or not self.use_sdpa
            or listening(self.hook_attn_scores)
            or listening(self.hook_pattern)
        )
        # A decoding step's one query comes after all the keys and sees every key: SDPA then needs no mask,
        # and runs several times faster than with an all-true one (the same numbers).
        if mask is None and (explicit or n_q not in (1, n_k)):
            # Queries are the last n_q positions; SDPA's is_causal would align them with the first.
            mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        if not explicit:
            z = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and n_q == n_k,
                scale=1 / self.scale,
                enable_gqa=groups > 1,
            )
            return z.transpose(1, 2)
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = self.hook_attn_scores(self._scores(q, k).masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(for_editing(self.hook_pattern, self._softmax(scores).to(v.dtype)))
        return (pattern @ v).transpose(1, 2)

    def _softmax(
        self, scores: Float[Tensor, "batch n_heads query_pos key_pos"]
    ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        # In float32 as Hugging Face does: half-precision exponentials lose the small weights.
        return F.softmax(scores, dim=-1, dtype=torch.float32)

    def _scores(
        self, q: Float[Tensor, "batch n_heads query_pos d_head"], k: Float[Tensor, "batch n_heads key_pos d_head"]
    ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        """Scaled, unmasked attention scores."""
        return (q @ k.transpose(-1, -2)) / self.scale

    def _clip(self, x: Tensor) -> Tensor:
        return x.clamp(-self.cfg.clip_qkv, self.cfg.clip_qkv) if self.cfg.clip_qkv else x

    def _write(self, z: Float[Tensor, "batch pos n_heads d_head"]) -> Float[Tensor, "batch pos d_model"]:
        fused_out = self.W_O.permute(2, 0, 1).flatten(1)  # [d_model, n_heads * d_head], a view
        if not listening(self.hook_result):
            return linear(z.flatten(-2), fused_out, self.b_O)
        result = torch.einsum("bpnh,nhm->bpnm", z, self.W_O)
        if not may_edit(self.hook_result):  # observers only (caching): keep the fused path
            self.hook_result(result)
            return linear(z.flatten(-2), fused_out, self.b_O)
        # An unchanged result keeps the fused (bit-identical) path; gradients need the per-head one.
        reference = None if wants_gradient(self.hook_result) else result.clone()
        result = self.hook_result(result)
        if reference is not None and torch.equal(result, reference):
            return linear(z.flatten(-2), fused_out, self.b_O)
        out = result.sum(dim=2)
        return out + self.b_O if self.b_O is not None else out


class SoftcapAttention(Attention):
    """Same as Attention except: scores are soft-capped, cap * tanh(scores / cap), before masking
    (Gemma 2's attn_logit_softcapping). SDPA cannot cap scores, so this always takes the explicit path."""

    always_explicit = True

    def _scores(self, q: Tensor, k: Tensor) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        cap = self.cfg.attn_scores_soft_cap
        return torch.tanh(super()._scores(q, k) / cap) * cap


class AlibiAttention(Attention):
    """Same as Attention except: each head adds slope * key_position to its scores (ALiBi, BLOOM).

    Key positions are indices into the key sequence (cached keys included). BLOOM's reference counts
    real tokens only; in a left-padded row the two differ by one constant per query row, which the
    softmax ignores, so patterns and outputs agree while `hook_attn_scores` differs by that constant.
    SDPA is not used (the bias would have to be materialized as a float mask): always the explicit path.
    """

    always_explicit = True

    def _scores(self, q: Tensor, k: Tensor) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        slopes = alibi_slopes(self.cfg.n_heads).to(q.device)
        key_positions = torch.arange(k.shape[-2], device=q.device)
        bias = (slopes[:, None, None] * key_positions).to(q.dtype)  # [n_heads, 1, key_pos], in float32 first
        return super()._scores(q, k) + bias


class SinkAttention(Attention):
    """Same as Attention except: each head's softmax has one more logit in its denominator, the learned
    `sinks[head]` ([n_heads]), a key with no value that every query sees (GPT-OSS's attention sinks). The
    pattern is the softmax without that column, so its rows sum to less than one. Always the explicit path."""

    always_explicit = True

    def __init__(
        self, cfg: HookedTransformerConfig, attn_type: AttnType = "global", scale: float = 0.0, rotates: bool = True
    ) -> None:
        super().__init__(cfg, attn_type, scale, rotates)
        self.sinks = nn.Parameter(torch.zeros(cfg.n_heads))  # [n_heads]

    def _softmax(self, scores: Tensor) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        sink = self.sinks.float()[None, :, None, None].expand(*scores.shape[:-1], 1)
        return F.softmax(torch.cat([scores.float(), sink], dim=-1), dim=-1)[..., :-1]


def make_attention(
    cfg: HookedTransformerConfig, attn_type: AttnType = "global", scale: float = 0.0, rotates: bool = True
) -> Attention:
    """The attention variant the config describes, for a layer of `attn_type` whose scores are divided by
    `scale` (0: cfg.attn_scale); `rotates=False` for a NoPE layer of a rotary model."""
    if cfg.attn_sinks:
        if cfg.attn_scores_soft_cap or cfg.positional_embedding_type == "alibi":
            raise ValueError("Attention sinks with soft-capped scores or ALiBi are not implemented.")
        return SinkAttention(cfg, attn_type, scale, rotates)
    if cfg.positional_embedding_type == "alibi":
        if cfg.attn_scores_soft_cap:
            raise ValueError("ALiBi attention with soft-capped scores is not implemented.")
        return AlibiAttention(cfg, attn_type, scale)
    if cfg.attn_scores_soft_cap:
        return SoftcapAttention(cfg, attn_type, scale, rotates)
    return Attention(cfg, attn_type, scale, rotates)

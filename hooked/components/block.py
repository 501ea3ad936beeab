"""Transformer blocks, each written as its residual-stream equation.

`Block` is the pre-norm block (GPT-2, Llama). The variants are small subclasses, picked once by
`make_block` from the config: `ParallelBlock` (GPT-J, GPT-NeoX, Phi), `SandwichBlock` (Gemma 2/3),
`PostNormBlock` (OLMo 2), `ResidualNormBlock` (OPT-350m) and `AttnOnlyBlock` (TransformerLens's
attention-only toy models).

Every block gets its layer's `position`: the rotary (cos, sin) tables of a rotary model, the position
embedding of a shortformer model (TransformerLens's "shortformer": added to the normalized query and
key inputs of attention, not to the value input nor to the residual stream), None otherwise.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooked.components.attention import RotaryTables, make_attention
from hooked.components.kv_cache import LayerKV
from hooked.components.mlp import MLP, XIELUMLP, make_gated_mlp
from hooked.components.moe import MoE
from hooked.components.norms import make_norm
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint, listening, may_edit, wants_gradient

# Rotary (cos, sin) tables, or a shortformer position embedding [batch, pos, d_model], or None.
Position = RotaryTables | Float[Tensor, "batch pos d_model"] | None


class Unset:
    """`model.blocks[i](resid)` called directly, without its layer's position and mask (see Block.attend)."""


UNSET = Unset()


class Block(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_groups = cfg.n_heads, cfg.n_key_value_groups
        self.shortformer = cfg.positional_embedding_type == "shortformer"
        self.needs_position = self.shortformer or cfg.layer_rotates(layer)
        self.local = cfg.layer_attn_type(layer) == "local"
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model]
        grouped = (cfg.n_heads, cfg.n_key_value_heads) if cfg.n_key_value_groups > 1 else None
        self.hook_k_input = HookPoint(grouped)  # [batch, pos, n_kv_heads, d_model]
        self.hook_v_input = HookPoint(grouped)  # [batch, pos, n_kv_heads, d_model]
        self.ln1 = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)
        self.attn = make_attention(
            cfg, cfg.layer_attn_type(layer), cfg.layer_attn_scale(layer), rotates=cfg.layer_rotates(layer)
        )
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]
        self.ln2 = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)
        self.mlp = make_mlp(cfg)
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        position: Position | Unset = UNSET,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None | Unset = UNSET,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attend(resid_pre, position, mask, past_kv))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid_mid))))
        return self.hook_resid_post(resid_mid + mlp_out)

    def attend(
        self, resid_pre: Tensor, position: Position | Unset, mask: Tensor | None | Unset, past_kv: LayerKV | None
    ) -> Float[Tensor, "batch pos d_model"]:
        """The attention layer's output for `resid_pre` (before any post-norm). A block called directly
        (`model.blocks[i](resid)`, as TransformerLens allowed) gets plain causal attention and no position,
        which is right only where the layer needs neither; otherwise it is refused, saying what to call."""
        if position is UNSET or mask is UNSET:
            if self.needs_position or self.local:
                need = "its rotary/shortformer positions" if self.needs_position else "its sliding-window mask"
                raise TypeError(
                    f"blocks.{self.layer} needs {need}, which the model computes: run it as "
                    f"model(resid, start_at_layer={self.layer}, stop_at_layer={self.layer + 1})."
                )
            position, mask = None, None
        q_input, k_input, v_input = self.attn_inputs(resid_pre)
        if self.shortformer:
            # Queries and keys see the position; values (and so the residual stream) do not. A per-head
            # input [batch, pos, heads, d_model] gets the same embedding for every head.
            q_input = q_input + (position if q_input.ndim == 3 else position.unsqueeze(2))
            k_input = k_input + (position if k_input.ndim == 3 else position.unsqueeze(2))
            position = None
        return self.attn(q_input, k_input, v_input, position, mask, past_kv)

    def attn_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The normalized query, key and value inputs: shared, or per head when a hook asks for them.

        Per-head copies (`hook_attn_in`, `hook_q_input`, ...) are of the residual before ln1, which is
        then applied to each copy (so ln1's hooks see a head axis). For grouped-query models the key and
        value inputs of kv head g are copied from the attn_in of query head g * n_heads / n_kv_heads.
        An input its hooks left unchanged takes the shared path, so its numbers stay bit-identical.
        """
        split_hooks = (self.hook_attn_in, self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if not any(listening(hp) for hp in split_hooks):
            x = self.ln1(resid_pre)
            return x, x, x
        if not any(may_edit(hp) for hp in split_hooks):
            # Only observers (caching): show them free broadcast views; the shared path computes.
            attn_in = self.hook_attn_in(resid_pre.unsqueeze(2).expand(-1, -1, self.n_heads, -1))
            self.hook_q_input(attn_in)
            kv_in = attn_in[:, :, :: self.n_kv_groups]
            self.hook_k_input(kv_in)
            self.hook_v_input(kv_in)
            x = self.ln1(resid_pre)
            return x, x, x
        attn_in = self.hook_attn_in(resid_pre.unsqueeze(2).repeat(1, 1, self.n_heads, 1))
        q_in = self.hook_q_input(attn_in.clone())
        kv_in = attn_in[:, :, :: self.n_kv_groups]
        k_in = self.hook_k_input(kv_in.clone())
        v_in = self.hook_v_input(kv_in.clone())
        if any(wants_gradient(hp) for hp in split_hooks):
            return self.ln1(q_in), self.ln1(k_in), self.ln1(v_in)
        shared = None
        inputs = []
        for per_head in (q_in, k_in, v_in):
            if torch.equal(per_head, resid_pre.unsqueeze(2).expand_as(per_head)):
                shared = self.ln1(resid_pre) if shared is None else shared
                inputs.append(shared)
            else:
                inputs.append(self.ln1(per_head))
        return tuple(inputs)


class ParallelBlock(Block):
    # Same as Block except: the MLP reads resid_pre too and both outputs are added to it (no resid_mid).
    # Families with one norm for both (GPT-J, Phi) load it as both ln1 and ln2.
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        del self.hook_resid_mid

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        position: Position | Unset = UNSET,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None | Unset = UNSET,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attend(resid_pre, position, mask, past_kv))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid_pre))))
        return self.hook_resid_post(resid_pre + attn_out + mlp_out)


class SandwichBlock(Block):
    # Same as Block except: each sublayer's output is normalized (ln1_post, ln2_post) before it is added
    # to the residual, so hook_attn_out / hook_mlp_out are the normalized outputs (Gemma 2, Gemma 3).
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.ln1_post = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)
        self.ln2_post = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        position: Position | Unset = UNSET,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None | Unset = UNSET,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.ln1_post(self.attend(resid_pre, position, mask, past_kv)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.ln2_post(self.mlp(self.ln2(self.hook_mlp_in(resid_mid)))))
        return self.hook_resid_post(resid_mid + mlp_out)


class PostNormBlock(SandwichBlock):
    # Same as SandwichBlock except: no norms before the sublayers, which read the residual itself (OLMo 2).
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.ln1 = nn.Identity()  # no parameters and no hook points: attention reads the residual
        self.ln2 = nn.Identity()


class ResidualNormBlock(Block):
    # Same as Block except: the norms follow each residual sum and renormalize the stream itself (the original
    # Transformer's post-LN, OPT-350m). Attention reads resid_pre; resid_mid = ln1_post(resid_pre + attn_out)
    # is what the MLP reads; resid_post = ln2_post(resid_mid + mlp_out). The stream is therefore no sum of the
    # sublayers' outputs (the residual analyses refuse it), and the last block's ln2_post is the final norm.
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.ln1 = nn.Identity()  # no parameters and no hook points: attention reads the residual
        self.ln2 = nn.Identity()
        self.ln1_post = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)
        self.ln2_post = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        position: Position | Unset = UNSET,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None | Unset = UNSET,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attend(resid_pre, position, mask, past_kv))
        resid_mid = self.hook_resid_mid(self.ln1_post(resid_pre + attn_out))
        mlp_out = self.hook_mlp_out(self.mlp(self.hook_mlp_in(resid_mid)))
        return self.hook_resid_post(self.ln2_post(resid_mid + mlp_out))


class AttnOnlyBlock(Block):
    # Same as Block except: no MLP, so no ln2, mlp, hook_resid_mid, hook_mlp_in or hook_mlp_out
    # (TransformerLens's attn_only blocks): resid_post = resid_pre + attn_out.
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        del self.hook_resid_mid, self.hook_mlp_in, self.ln2, self.mlp, self.hook_mlp_out

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        position: Position | Unset = UNSET,
        mask: Bool[Tensor, "batch 1 query_pos key_pos"] | None | Unset = UNSET,
        past_kv: LayerKV | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attend(resid_pre, position, mask, past_kv))
        return self.hook_resid_post(resid_pre + attn_out)


def make_mlp(cfg: HookedTransformerConfig) -> nn.Module:
    if cfg.num_experts:
        return MoE(cfg)
    if cfg.gated_mlp:
        return make_gated_mlp(cfg)
    return XIELUMLP(cfg) if cfg.act_fn == "xielu" else MLP(cfg)


def make_block(cfg: HookedTransformerConfig, layer: int) -> Block:
    """The block variant the config describes."""
    if cfg.attn_only:
        return AttnOnlyBlock(cfg, layer)
    if cfg.parallel_attn_mlp:
        return ParallelBlock(cfg, layer)
    if cfg.block_norms == "pre_and_post":
        return SandwichBlock(cfg, layer)
    if cfg.block_norms == "post":
        return PostNormBlock(cfg, layer)
    if cfg.block_norms == "post_residual":
        return ResidualNormBlock(cfg, layer)
    return Block(cfg, layer)

"""Norms frozen at a cached scale: the linear maps residual-stream analysis passes components through.

A norm is not linear, but with its statistics frozen at the scale s it computed on the real input
(its cached `hook_scale`) it is: x -> (x - mean(x), for a LayerNorm) / s, then times its weight w.
Applied to terms summing to that input, the mapped terms sum to what the norm made of it. Two
analyses use this (cache_analysis.py): scaling a stack of residual components by the norm that
reads the residual (`apply_ln_to_stack`), and, in blocks with post-norms (Gemma 2/3's and OLMo 2's
ln1_post and ln2_post), carrying each head's result, each neuron's write and each bias through the
post-norm to what it writes to the residual:

    attn_out[l] = ln1_post(sum_h result[l, h] + b_O[l])
                = sum_h w * result[l, h] / s + w * b_O[l] / s (+ ln1_post.b)   (RMSNorm; LayerNorm centers each term)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.components.norms import LayerNormPre, RMSNormPre
from hooked.names import Slice

if TYPE_CHECKING:
    from hooked.analysis.activation_cache import ActivationCache

Sublayer = Literal["attn", "mlp"]
POST_NORMS = {"attn": "ln1_post", "mlp": "ln2_post"}  # the norm on each sublayer's output, where a block has one


def centers(norm: nn.Module) -> bool:
    """Whether the norm subtracts the mean over d_model before scaling (LayerNorm, with or without
    parameters, does; RMSNorm not)."""
    if isinstance(norm, LayerNormPre):
        return True
    if isinstance(norm, RMSNormPre):  # RMSNorm too
        return False
    raise TypeError(f"Cannot apply a {type(norm).__name__} to a residual stack: only LayerNorm and RMSNorm are known.")


def frozen_norm(x: Float[Tensor, "... d_model"], norm: nn.Module, scale: Tensor) -> Float[Tensor, "... d_model"]:
    """`norm` before its weight with its statistics frozen at `scale` (broadcasting against x): centered
    (LayerNorm), then divided by the scale. In float32, as the norm computes, cast back."""
    dtype = x.dtype
    x = x.float()
    if centers(norm):
        x = x - x.mean(-1, keepdim=True)
    return (x / scale).to(dtype)


def cached_scale(cache: ActivationCache, norm_name: str, needed_by: str, pos_slice: Any) -> Float[Tensor, "... 1"]:
    """The norm's cached `hook_scale`, cut by `pos_slice` along the position axis."""
    name = f"{norm_name}.hook_scale"
    if name not in cache.cache_dict:
        raise ValueError(
            f"{needed_by} needs the cached norm scale {name!r}, which this cache lacks: "
            f"add {name!r} to names_filter when calling run_with_cache."
        )
    return Slice(pos_slice).apply(cache.cache_dict[name], dim=-2)


def post_norm(cache: ActivationCache, layer: int, sublayer: Sublayer) -> nn.Module | None:
    """The norm block `layer` applies to its sublayer's output before adding it to the residual, if any."""
    return getattr(cache.model.blocks[layer], POST_NORMS[sublayer], None)


def through_post_norm(
    cache: ActivationCache, layer: int, sublayer: Sublayer, terms: Float[Tensor, "... d_model"], pos_slice: Any
) -> Float[Tensor, "... d_model"]:
    """What terms of a sublayer's raw output (results, neuron writes, its bias) write to the residual:
    themselves, or through the block's post-norm frozen at its cached scale, times its weight. The
    post-norm's own bias, written once, is `bias_writes`'s. `terms` is [*batch, pos, *terms, d_model],
    its position axis cut by `pos_slice` (an int drops it)."""
    norm = post_norm(cache, layer, sublayer)
    if norm is None:
        return terms
    name = f"blocks.{layer}.{POST_NORMS[sublayer]}"
    scale = cached_scale(cache, name, f"What block {layer}'s {sublayer} writes to the residual", pos_slice)
    n_terms = terms.ndim - scale.ndim  # the axes between position and d_model: heads, neurons
    scale = scale.reshape(*scale.shape[:-1], *(1,) * n_terms, 1).to(terms.device)
    return frozen_norm(terms, norm, scale) * norm.w.to(terms)


def bias_writes(
    cache: ActivationCache,
    attn_layers: range,
    mlp_layers: range,
    like: Float[Tensor, "... d_model"],
    pos_slice: Any,
) -> Float[Tensor, "... d_model"]:
    """What the output biases of these attention layers (b_O) and MLP layers (b_out) write to the
    residual, with the biases of the post-norms they pass through; shaped like `like` (a residual
    cut by `pos_slice`), since through a post-norm a bias writes a different vector at each position."""
    total = torch.zeros_like(like)
    sublayers = [(layer, "attn") for layer in attn_layers] + [(layer, "mlp") for layer in mlp_layers]
    for layer, sublayer in sublayers:
        block = cache.model.blocks[layer]
        bias = block.attn.b_O if sublayer == "attn" else block.mlp.b_out
        if bias is not None:
            total = total + through_post_norm(cache, layer, sublayer, bias.to(like).expand_as(like), pos_slice)
        norm_bias = getattr(post_norm(cache, layer, sublayer), "b", None)
        if norm_bias is not None:
            total = total + norm_bias.to(like)
    return total

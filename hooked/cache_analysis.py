"""Residual-stream analysis of a cached run: decompositions, per-head and per-neuron outputs, norm
scaling, direct logit attribution and the logit lens. `ActivationCache` methods delegate here.

The residual stream is a sum of what every component wrote to it (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"):

    resid_pre[L] = embed (+ pos_embed) + sum_{l < L} (attn_out[l] + mlp_out[l])
    attn_out[l]  = sum_h result[l, h] + b_O[l],    result[l, h] = z[l, h] @ W_O[l, h]
    mlp_out[l]   = sum_n post[l, n] * W_out[l, n] + b_out[l]

Each decomposition returns a stack [component, *batch, pos, d_model] whose sum over the first axis
is exactly the residual it decomposes. With `return_labels=True` it also returns one label per
component:

    "embed", "pos_embed"            token embedding, learned positions (rotary models have none)
    "{l}_pre", "{l}_mid"            residual entering block l, entering its MLP (accumulated_resid)
    "final_post"                    residual after the last block, the input of ln_final
    "{l}_attn_out", "{l}_mlp_out"   a whole attention / MLP output, its bias included
    "L{l}H{h}"                      head h of layer l: its result, without b_O
    "L{l}N{n}"                      neuron n of layer l: post * W_out[n], without b_out
    "bias"                          the b_O / b_out terms no listed component includes
    "remainder"                     the residual minus the listed components

Conventions. A residual `layer` counts streams 0..n_layers: L is the stream entering block L (its
attention input; with `mlp_input`, its MLP input) and n_layers the final one. None means n_layers,
and negative values count back from it, so -1 is the final stream (TransformerLens's rule).
`pos_slice` (a `utils.Slice` or anything it accepts) picks positions along the position axis (the
one before d_model); give `apply_ln_to_stack` and `logit_attrs` the slice the stack was cut with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.components.norms import LayerNorm, RMSNorm
from hooked.utils import Slice

if TYPE_CHECKING:
    from hooked.activation_cache import ActivationCache

Stack = Float[Tensor, "component *batch_and_pos d_model"]
Part = tuple[list[str], Tensor]  # labels and a [component, *batch, pos, d_model] block of the stack


# ---- layers, residuals and norms ---------------------------------------------------------------


def _resid_layer(cache: ActivationCache, layer: int | None, mlp_input: bool = False) -> int:
    """A residual-stream index in 0..n_layers (see the module docstring)."""
    n_layers = cache.model.cfg.n_layers
    resolved = n_layers if layer is None else layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layers:
        raise ValueError(f"layer must be in -{n_layers + 1}..{n_layers} (or None for the final stream), got {layer}.")
    if mlp_input and resolved == n_layers:
        raise ValueError(f"mlp_input=True needs a block whose MLP reads the stream: layer must be < {n_layers}.")
    return resolved


def _residual(cache: ActivationCache, layer: int, mlp_input: bool) -> Tensor:
    n_layers = cache.model.cfg.n_layers
    if layer == n_layers:
        return cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    return cache[f"blocks.{layer}.hook_resid_mid" if mlp_input else f"blocks.{layer}.hook_resid_pre"]


def _norm_name(cache: ActivationCache, layer: int, mlp_input: bool) -> str:
    """The norm that reads residual stream `layer`."""
    if layer == cache.model.cfg.n_layers:
        return "ln_final"
    return f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}"


def _centers(norm: nn.Module) -> bool:
    """Whether the norm subtracts the mean over d_model before scaling (LayerNorm does, RMSNorm not)."""
    if isinstance(norm, LayerNorm):
        return True
    if isinstance(norm, RMSNorm):
        return False
    raise TypeError(f"Cannot apply a {type(norm).__name__} to a residual stack: only LayerNorm and RMSNorm are known.")


def _renormalize(x: Float[Tensor, "... d_model"], norm: nn.Module) -> Float[Tensor, "... d_model"]:
    """Each vector normalized by its own statistics, as `norm` computes them (before its weight).

    The formula of components/norms.py, repeated rather than calling the module so that no hook
    on the norm fires for an analysis, and so the stack's extra leading axis reaches no hook.
    """
    dtype = x.dtype
    x = x.float()
    if _centers(norm):
        x = x - x.mean(-1, keepdim=True)
    return (x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()).to(dtype)


def _sliced(tensor: Tensor, pos_slice: Any, dim: int = -2) -> Tensor:
    return Slice(pos_slice).apply(tensor, dim=dim)


def _assemble(
    cache: ActivationCache,
    parts: list[Part],
    layer: int,
    mlp_input: bool,
    apply_ln: bool,
    pos_slice: Any,
    return_labels: bool,
) -> Stack | tuple[Stack, list[str]]:
    """Concatenate the (already position-sliced) parts, optionally scaled by the cached norm scale."""
    if parts:
        stack = torch.cat([block for _, block in parts], dim=0)
    else:  # e.g. the heads before layer 0: an empty stack shaped like the residual
        resid = _sliced(_residual(cache, layer, mlp_input), pos_slice)
        stack = resid.new_zeros((0, *resid.shape))
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice)
    labels = [label for names, _ in parts for label in names]
    return (stack, labels) if return_labels else stack


def _embed_parts(cache: ActivationCache, pos_slice: Any) -> list[Part]:
    # Decided by the model, not by what the cache holds: a filtered-out embedding is a KeyError
    # (naming names_filter), never a decomposition that silently fails to sum.
    names = ["embed"] + (["pos_embed"] if hasattr(cache.model, "pos_embed") else [])
    return [([name], _sliced(cache[f"hook_{name}"], pos_slice)[None]) for name in names]


# ---- residual streams ----------------------------------------------------------------------------


def accumulated_resid(
    cache: ActivationCache,
    layer: int | None = None,
    incl_mid: bool = False,
    apply_ln: bool = False,
    pos_slice: Any = None,
    mlp_input: bool = False,
    return_labels: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """The residual stream at each point up to `layer`: "0_pre", ... , f"{layer}_pre" (with `incl_mid`
    also each earlier "{l}_mid"; with `mlp_input` ending at f"{layer}_mid"), or ending at "final_post"
    for the final stream.

    `apply_ln` normalizes every entry by its OWN mean and scale, as the norm reading `layer` would if
    given that residual (before the norm's weight). TransformerLens divided every entry by the scale
    cached for the last one, which misstates all earlier layers; for the final stream the two agree.
    """
    layer = _resid_layer(cache, layer, mlp_input)
    parts: list[Part] = []
    for l in range(layer):
        parts.append(([f"{l}_pre"], cache[f"blocks.{l}.hook_resid_pre"]))
        if incl_mid:
            parts.append(([f"{l}_mid"], cache[f"blocks.{l}.hook_resid_mid"]))
    if layer == cache.model.cfg.n_layers:
        parts.append((["final_post"], _residual(cache, layer, False)))
    else:
        parts.append(([f"{layer}_pre"], cache[f"blocks.{layer}.hook_resid_pre"]))
        if mlp_input:
            parts.append(([f"{layer}_mid"], cache[f"blocks.{layer}.hook_resid_mid"]))
    parts = [(names, _sliced(resid, pos_slice)[None]) for names, resid in parts]
    stack, labels = _assemble(cache, parts, layer, mlp_input, False, pos_slice, True)
    if apply_ln:
        stack = _renormalize(stack, cache.model.get_submodule(_norm_name(cache, layer, mlp_input)))
    return (stack, labels) if return_labels else stack


def decompose_resid(
    cache: ActivationCache,
    layer: int | None = None,
    mlp_input: bool = False,
    mode: Literal["all", "mlp", "attn"] = "all",
    apply_ln: bool = False,
    pos_slice: Any = None,
    incl_embeds: bool = True,
    return_labels: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """The residual stream at `layer` as "embed", "pos_embed", then "{l}_attn_out" and "{l}_mlp_out" of
    each earlier layer (and `layer`'s own attention with `mlp_input`). With mode "all" and the
    embeddings it sums to that residual; "attn" / "mlp" keep one kind of layer output."""
    if mode not in ("all", "mlp", "attn"):
        raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}.")
    layer = _resid_layer(cache, layer, mlp_input)
    parts = _embed_parts(cache, pos_slice) if incl_embeds else []
    for l in range(layer + 1 if mlp_input else layer):
        if mode != "mlp":
            parts.append(([f"{l}_attn_out"], _sliced(cache[f"blocks.{l}.hook_attn_out"], pos_slice)[None]))
        if mode != "attn" and l < layer:
            parts.append(([f"{l}_mlp_out"], _sliced(cache[f"blocks.{l}.hook_mlp_out"], pos_slice)[None]))
    return _assemble(cache, parts, layer, mlp_input, apply_ln, pos_slice, return_labels)


# ---- attention heads -----------------------------------------------------------------------------


def _head_results(cache: ActivationCache, layer: int, pos_slice: Any = None) -> Float[Tensor, "... n_heads d_model"]:
    """Each head's write to the residual: the cached hook_result, else z @ W_O (the same einsum)."""
    name = f"blocks.{layer}.attn.hook_result"
    if name in cache.cache_dict:
        return _sliced(cache.cache_dict[name], pos_slice, dim=-3)
    z = _sliced(cache[f"blocks.{layer}.attn.hook_z"], pos_slice, dim=-3)
    return torch.einsum("...nh,nhm->...nm", z, cache.model.blocks[layer].attn.W_O.to(z.device))


def compute_head_results(cache: ActivationCache) -> None:
    """Fill in `blocks.{l}.attn.hook_result` (from hook_z and W_O) for every layer that lacks it."""
    for layer in range(cache.model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        if name not in cache.cache_dict:
            cache.cache_dict[name] = _head_results(cache, layer)


def stack_head_results(
    cache: ActivationCache,
    layer: int | None = -1,
    return_labels: bool = False,
    incl_remainder: bool = False,
    pos_slice: Any = None,
    apply_ln: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """Every head of the layers before `layer` ("L{l}H{h}", layer-major), plus with `incl_remainder`
    the rest of that residual (embeddings, MLPs, biases) so the stack sums to it."""
    layer = _resid_layer(cache, layer)
    n_heads = cache.model.cfg.n_heads
    parts: list[Part] = [
        ([f"L{l}H{h}" for h in range(n_heads)], _head_results(cache, l, pos_slice).movedim(-2, 0)) for l in range(layer)
    ]
    if incl_remainder:
        remainder = _sliced(_residual(cache, layer, False), pos_slice)
        if parts:
            remainder = remainder - torch.cat([block for _, block in parts]).sum(0)
        parts.append((["remainder"], remainder[None]))
    return _assemble(cache, parts, layer, False, apply_ln, pos_slice, return_labels)


def stack_activation(
    cache: ActivationCache, activation_name: str, layer: int | None = -1, sublayer_type: str | None = None
) -> Float[Tensor, "n_layers ..."]:
    """One activation (shorthand as in `utils.get_act_name`, e.g. "pattern") of every block before
    `layer` (-1 / None: all blocks), stacked on a new leading layer axis."""
    layer = _resid_layer(cache, layer)
    if layer == 0:
        raise ValueError("stack_activation(layer=0) selects no block; use a layer above 0 (or -1 for all).")
    return torch.stack([cache[(activation_name, l, sublayer_type)] for l in range(layer)], dim=0)


# ---- MLP neurons ---------------------------------------------------------------------------------


def get_neuron_results(
    cache: ActivationCache, layer: int, neuron_slice: Any = None, pos_slice: Any = None
) -> Float[Tensor, "... d_mlp d_model"]:
    """Each neuron's write to the residual in block `layer`: post[..., n] * W_out[n] (no bias)."""
    layer = range(cache.model.cfg.n_layers)[layer]
    neurons = Slice(neuron_slice)
    post = neurons.apply(_sliced(cache[f"blocks.{layer}.mlp.hook_post"], pos_slice), dim=-1)
    W_out = neurons.apply(cache.model.blocks[layer].mlp.W_out.to(post.device), dim=0)
    return post[..., None] * W_out


def stack_neuron_results(
    cache: ActivationCache,
    layer: int | None,
    pos_slice: Any = None,
    neuron_slice: Any = None,
    return_labels: bool = False,
    incl_remainder: bool = False,
    apply_ln: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """Every neuron (or those `neuron_slice` picks) of the layers before `layer` ("L{l}N{n}"), plus with
    `incl_remainder` the rest of that residual, so the stack sums to it."""
    layer = _resid_layer(cache, layer)
    d_mlp = cache.model.cfg.d_mlp
    indices = [int(n) % d_mlp for n in Slice(neuron_slice).indices(d_mlp)]
    parts: list[Part] = []
    for l in range(layer):
        results = get_neuron_results(cache, l, neuron_slice, pos_slice)
        if isinstance(Slice(neuron_slice).slice, int):  # an int index dropped the neuron axis
            results = results.unsqueeze(-2)
        parts.append(([f"L{l}N{n}" for n in indices], results.movedim(-2, 0)))
    if incl_remainder:
        remainder = _sliced(_residual(cache, layer, False), pos_slice)
        if parts:
            remainder = remainder - torch.cat([block for _, block in parts]).sum(0)
        parts.append((["remainder"], remainder[None]))
    return _assemble(cache, parts, layer, False, apply_ln, pos_slice, return_labels)


# ---- the whole residual --------------------------------------------------------------------------


def get_full_resid_decomposition(
    cache: ActivationCache,
    layer: int | None = None,
    mlp_input: bool = False,
    expand_neurons: bool = True,
    apply_ln: bool = False,
    pos_slice: Any = None,
    return_labels: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """The residual at `layer` split as finely as the cache allows, in TransformerLens's order: every
    head ("L{l}H{h}"), every neuron ("L{l}N{n}", or "{l}_mlp_out" without `expand_neurons`), "embed",
    "pos_embed", then "bias" (the b_O, and b_out when neurons are expanded, that no other entry
    holds). Sums to the residual exactly."""
    layer = _resid_layer(cache, layer, mlp_input)
    n_heads, d_mlp = cache.model.cfg.n_heads, cache.model.cfg.d_mlp
    parts: list[Part] = [
        ([f"L{l}H{h}" for h in range(n_heads)], _head_results(cache, l, pos_slice).movedim(-2, 0))
        for l in range(layer + 1 if mlp_input else layer)
    ]
    for l in range(layer):
        if expand_neurons:
            neurons = get_neuron_results(cache, l, pos_slice=pos_slice).movedim(-2, 0)
            parts.append(([f"L{l}N{n}" for n in range(d_mlp)], neurons))
        else:
            parts.append(([f"{l}_mlp_out"], _sliced(cache[f"blocks.{l}.hook_mlp_out"], pos_slice)[None]))
    parts += _embed_parts(cache, pos_slice)
    bias = cache.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
    like = parts[-1][1][0]
    parts.append((["bias"], bias.to(like).expand_as(like)[None]))
    return _assemble(cache, parts, layer, mlp_input, apply_ln, pos_slice, return_labels)


# ---- norms and logits ----------------------------------------------------------------------------


def apply_ln_to_stack(
    cache: ActivationCache, stack: Stack, layer: int | None = None, mlp_input: bool = False, pos_slice: Any = None
) -> Stack:
    """Scale every component as the norm reading residual `layer` scaled the real residual.

    LayerNorm: subtract each component's mean over d_model, then divide by the CACHED scale;
    RMSNorm: only divide. The cached scale is that of the whole residual, so the map is linear and
    the scaled components still sum to the norm's `hook_normalized` (the output before its weight w
    and bias b; multiply by w yourself, or fold_layer_norm first, as TransformerLens users did).
    `pos_slice` is the slice the stack was cut with, applied to the scale too.
    """
    layer = _resid_layer(cache, layer, mlp_input)
    norm_name = _norm_name(cache, layer, mlp_input)
    scale_name = f"{norm_name}.hook_scale"
    if scale_name not in cache.cache_dict:
        raise ValueError(
            f"apply_ln_to_stack needs the cached norm scale {scale_name!r}, which this cache lacks: "
            f"add {scale_name!r} to names_filter when calling run_with_cache."
        )
    scale = _sliced(cache.cache_dict[scale_name], pos_slice)
    leading = scale.shape[:-1]  # the stack's axes between its component axis and d_model must match
    if tuple(stack.shape[-1 - len(leading) : -1]) != tuple(leading):
        raise ValueError(
            f"The stack's shape {tuple(stack.shape)} does not end in the cached scale's axes {tuple(leading)} "
            f"(+ d_model) for pos_slice={pos_slice!r}: slice the stack with the same pos_slice (or pass the "
            "same pos_slice to the function that built it)."
        )
    dtype = stack.dtype
    x = stack.float()  # the norm's statistics were float32; its scale is float32
    if _centers(cache.model.get_submodule(norm_name)):
        x = x - x.mean(-1, keepdim=True)
    return (x / scale).to(dtype)

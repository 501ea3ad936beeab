"""Residual-stream analysis of a cached run: decompositions, per-head and per-neuron outputs, norm
scaling, direct logit attribution and the logit lens. `ActivationCache` methods delegate here.

The residual stream is a sum of what every component wrote to it (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"):

    resid_pre[L] = embed (+ pos_embed) + sum_{l < L} (attn_out[l] + mlp_out[l])
    attn_out[l]  = sum_h result[l, h] + b_O[l],    result[l, h] = z[l, h] @ W_O[l, h]
    mlp_out[l]   = sum_n post[l, n] * W_out[l, n] + b_out[l]

Block variants (components/block.py) change two things. A parallel block's MLP reads resid_pre: the
stream entering its MLP holds none of the block's own attention (and there is no resid_mid). A block
with post-norms (Gemma 2/3, OLMo 2) adds ln1_post(attention output) and ln2_post(MLP output): each
head's result, neuron's write and bias reaches the residual through that norm, frozen at its cached
`hook_scale` so that it is linear (frozen_norms.py), and the parts still sum exactly. A mixture of
experts has no per-block neurons; its MLP output stays whole.

Each decomposition returns a stack [component, *batch, pos, d_model] whose sum over the first axis
is exactly the residual it decomposes. With `return_labels=True` it also returns one label per
component:

    "embed", "pos_embed"            token embedding, learned positions (rotary models have none)
    "{l}_pre", "{l}_mid"            residual entering block l, entering its MLP (accumulated_resid)
    "final_post"                    residual after the last block, the input of ln_final
    "{l}_attn_out", "{l}_mlp_out"   a whole attention / MLP output, its bias included
    "L{l}H{h}"                      head h of layer l: its result, without b_O (through any post-norm)
    "L{l}N{n}"                      neuron n of layer l: post * W_out[n], without b_out (likewise)
    "bias"                          the b_O / b_out terms no listed component includes (likewise)
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

from hooked.analysis.frozen_norms import bias_writes, cached_scale, centers, frozen_norm, through_post_norm
from hooked.names import Slice

if TYPE_CHECKING:
    from hooked.analysis.activation_cache import ActivationCache

Stack = Float[Tensor, "component *batch_and_pos d_model"]
Part = tuple[list[str], Tensor]  # labels and a [component, *batch, pos, d_model] block of the stack


# ---- layers, residuals and norms ---------------------------------------------------------------


def _refuse_renormalized_stream(cache: ActivationCache, what: str) -> None:
    if cache.model.cfg.block_norms == "post_residual":
        raise NotImplementedError(
            f"{what}: this model's blocks are post-LN (block_norms='post_residual', OPT-350m), which renormalize "
            "each residual sum, so the stream is no sum of embeddings and sublayer outputs. The streams "
            "themselves (accumulated_resid, logit_lens) and each sublayer's and head's output are exact."
        )


def _resid_layer(cache: ActivationCache, layer: int | None, mlp_input: bool = False) -> int:
    """A residual-stream index in 0..n_layers (see the module docstring)."""
    n_layers = cache.model.cfg.n_layers
    resolved = n_layers if layer is None else layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layers:
        raise ValueError(f"layer must be in -{n_layers + 1}..{n_layers} (or None for the final stream), got {layer}.")
    if mlp_input and resolved == n_layers:
        raise ValueError(f"mlp_input=True needs a block whose MLP reads the stream: layer must be < {n_layers}.")
    if mlp_input and cache.model.cfg.attn_only:
        raise ValueError("mlp_input=True needs an MLP, and this model is attention-only: leave mlp_input False.")
    return resolved


def _has_mlps(cache: ActivationCache) -> bool:
    return not cache.model.cfg.attn_only


def _reads_own_attention(cache: ActivationCache, mlp_input: bool) -> bool:
    """Whether the stream asked for holds its block's attention output: an MLP input, unless the block
    is parallel (its MLP reads resid_pre)."""
    return mlp_input and not cache.model.cfg.parallel_attn_mlp


def _residual(cache: ActivationCache, layer: int, mlp_input: bool) -> Tensor:
    n_layers = cache.model.cfg.n_layers
    if layer == n_layers:
        return cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    mid = _reads_own_attention(cache, mlp_input)
    return cache[f"blocks.{layer}.hook_resid_mid" if mid else f"blocks.{layer}.hook_resid_pre"]


def _norm_name(cache: ActivationCache, layer: int, mlp_input: bool) -> str:
    """The norm that reads residual stream `layer`."""
    if layer == cache.model.cfg.n_layers:
        return "ln_final"
    return f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}"


def _reading_norm(cache: ActivationCache, layer: int, mlp_input: bool) -> nn.Module | None:
    """The norm module reading residual stream `layer`; None where the sublayer reads the residual
    itself (OLMo 2's blocks, whose ln1 and ln2 are identities)."""
    norm = cache.model.get_submodule(_norm_name(cache, layer, mlp_input))
    return None if isinstance(norm, nn.Identity) else norm


def _renormalize(x: Float[Tensor, "... d_model"], norm: nn.Module) -> Float[Tensor, "... d_model"]:
    """Each vector normalized by its own statistics, as `norm` computes them (before its weight).

    The formula of components/norms.py, repeated rather than calling the module so that no hook
    on the norm fires for an analysis, and so the stack's extra leading axis reaches no hook.
    """
    dtype = x.dtype
    x = x.float()
    if centers(norm):
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
    # Shortformer positions go to the attention inputs, not the residual: no "pos_embed" part then.
    names = ["embed"] + (["pos_embed"] if cache.model.cfg.positional_embedding_type == "standard" else [])
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
    for the final stream. Parallel blocks have no resid_mid: `incl_mid` is refused, and with
    `mlp_input` the last entry is f"{layer}_pre", the stream their MLP reads.

    `apply_ln` normalizes every entry by its OWN mean and scale, as the norm reading `layer` would if
    given that residual (before the norm's weight). TransformerLens divided every entry by the scale
    cached for the last one, which misstates all earlier layers; for the final stream the two agree.
    """
    layer = _resid_layer(cache, layer, mlp_input)
    if incl_mid and (cache.model.cfg.parallel_attn_mlp or cache.model.cfg.attn_only):
        why = "attention-only" if cache.model.cfg.attn_only else "parallel (attention and MLP both read resid_pre)"
        raise ValueError(
            f"incl_mid=True lists each block's resid_mid, which this model's blocks do not have ({why}): "
            "leave incl_mid False."
        )
    parts: list[Part] = []
    for l in range(layer):
        parts.append(([f"{l}_pre"], cache[f"blocks.{l}.hook_resid_pre"]))
        if incl_mid:
            parts.append(([f"{l}_mid"], cache[f"blocks.{l}.hook_resid_mid"]))
    if layer == cache.model.cfg.n_layers:
        parts.append((["final_post"], _residual(cache, layer, False)))
    else:
        parts.append(([f"{layer}_pre"], cache[f"blocks.{layer}.hook_resid_pre"]))
        if _reads_own_attention(cache, mlp_input):
            parts.append(([f"{layer}_mid"], cache[f"blocks.{layer}.hook_resid_mid"]))
    parts = [(names, _sliced(resid, pos_slice)[None]) for names, resid in parts]
    stack, labels = _assemble(cache, parts, layer, mlp_input, False, pos_slice, True)
    norm = _reading_norm(cache, layer, mlp_input)
    if apply_ln and norm is not None:
        stack = _renormalize(stack, norm)
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
    each earlier layer (and `layer`'s own attention with `mlp_input`, unless the block is parallel).
    With mode "all" and the embeddings it sums to that residual; "attn" / "mlp" keep one kind of
    layer output."""
    if mode not in ("all", "mlp", "attn"):
        raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}.")
    _refuse_renormalized_stream(cache, "decompose_resid")
    layer = _resid_layer(cache, layer, mlp_input)
    parts = _embed_parts(cache, pos_slice) if incl_embeds else []
    for l in range(layer + 1 if _reads_own_attention(cache, mlp_input) else layer):
        if mode != "mlp":
            parts.append(([f"{l}_attn_out"], _sliced(cache[f"blocks.{l}.hook_attn_out"], pos_slice)[None]))
        if mode != "attn" and l < layer and _has_mlps(cache):
            parts.append(([f"{l}_mlp_out"], _sliced(cache[f"blocks.{l}.hook_mlp_out"], pos_slice)[None]))
    return _assemble(cache, parts, layer, mlp_input, apply_ln, pos_slice, return_labels)


# ---- attention heads -----------------------------------------------------------------------------


def _head_results(cache: ActivationCache, layer: int, pos_slice: Any = None) -> Float[Tensor, "... n_heads d_model"]:
    """Each head's result (hook_result): the cached one, else z @ W_O (the same einsum). Before any
    post-norm; `_head_writes` is what reaches the residual."""
    name = f"blocks.{layer}.attn.hook_result"
    if name in cache.cache_dict:
        return _sliced(cache.cache_dict[name], pos_slice, dim=-3)
    z = _sliced(cache[f"blocks.{layer}.attn.hook_z"], pos_slice, dim=-3)
    return torch.einsum("...nh,nhm->...nm", z, cache.model.blocks[layer].attn.W_O.to(z.device))


def _head_writes(cache: ActivationCache, layer: int, pos_slice: Any = None) -> Float[Tensor, "... n_heads d_model"]:
    """Each head's write to the residual: its result, through the block's post-norm if it has one."""
    return through_post_norm(cache, layer, "attn", _head_results(cache, layer, pos_slice), pos_slice)


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
        ([f"L{l}H{h}" for h in range(n_heads)], _head_writes(cache, l, pos_slice).movedim(-2, 0)) for l in range(layer)
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


def _refuse_experts(cache: ActivationCache) -> None:
    """Neuron results need one dense MLP per block: refused, naming what works, for MoE and attention-only."""
    if not _has_mlps(cache):
        raise ValueError(
            "This model is attention-only: it has no neurons. Use expand_neurons=False, or stack_head_results."
        )
    n_experts = cache.model.cfg.num_experts
    if n_experts:
        raise ValueError(
            f"Neuron results need one MLP per block, but this model's blocks each mix {n_experts} experts, whose "
            "neurons see only the tokens routed to them (blocks.{l}.mlp.experts.{e}.hook_post). Use "
            "get_full_resid_decomposition(expand_neurons=False), which keeps each MLP output whole, or decompose_resid."
        )


def get_neuron_results(
    cache: ActivationCache, layer: int, neuron_slice: Any = None, pos_slice: Any = None
) -> Float[Tensor, "... d_mlp d_model"]:
    """Each neuron's write to the residual in block `layer`: post[..., n] * W_out[n] (no bias), through
    the block's post-norm if it has one. Refused for a mixture of experts."""
    _refuse_experts(cache)
    layer = range(cache.model.cfg.n_layers)[layer]
    neurons = Slice(neuron_slice)
    post = neurons.apply(_sliced(cache[f"blocks.{layer}.mlp.hook_post"], pos_slice), dim=-1)
    W_out = neurons.apply(cache.model.blocks[layer].mlp.W_out.to(post.device), dim=0)
    return through_post_norm(cache, layer, "mlp", post[..., None] * W_out, pos_slice)


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
    _refuse_experts(cache)
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
    holds; through post-norms, what they write, and the post-norms' biases). Sums to the residual
    exactly. A mixture of experts has no per-block neurons: it needs `expand_neurons=False`."""
    _refuse_renormalized_stream(cache, "get_full_resid_decomposition")
    layer = _resid_layer(cache, layer, mlp_input)
    if expand_neurons and cache.model.cfg.num_experts:
        _refuse_experts(cache)
    n_heads, d_mlp = cache.model.cfg.n_heads, cache.model.cfg.d_mlp
    attn_layers = range(layer + 1 if _reads_own_attention(cache, mlp_input) else layer)
    parts: list[Part] = [
        ([f"L{l}H{h}" for h in range(n_heads)], _head_writes(cache, l, pos_slice).movedim(-2, 0)) for l in attn_layers
    ]
    for l in range(layer if _has_mlps(cache) else 0):
        if expand_neurons:
            neurons = get_neuron_results(cache, l, pos_slice=pos_slice).movedim(-2, 0)
            parts.append(([f"L{l}N{n}" for n in range(d_mlp)], neurons))
        else:
            parts.append(([f"{l}_mlp_out"], _sliced(cache[f"blocks.{l}.hook_mlp_out"], pos_slice)[None]))
    parts += _embed_parts(cache, pos_slice)
    mlp_layers = range(layer if expand_neurons and _has_mlps(cache) else 0)
    parts.append((["bias"], bias_writes(cache, attn_layers, mlp_layers, parts[-1][1][0], pos_slice)[None]))
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
    `pos_slice` is the slice the stack was cut with, applied to the scale too. Where the sublayer
    reads the residual itself (OLMo 2's blocks have no norm before attention or MLP), the stack is
    returned as it is.
    """
    layer = _resid_layer(cache, layer, mlp_input)
    norm = _reading_norm(cache, layer, mlp_input)
    if norm is None:
        return stack
    scale = cached_scale(cache, _norm_name(cache, layer, mlp_input), "apply_ln_to_stack", pos_slice)
    leading = scale.shape[:-1]  # the stack's axes between its component axis and d_model must match
    if tuple(stack.shape[-1 - len(leading) : -1]) != tuple(leading):
        raise ValueError(
            f"The stack's shape {tuple(stack.shape)} does not end in the cached scale's axes {tuple(leading)} "
            f"(+ d_model) for pos_slice={pos_slice!r}: slice the stack with the same pos_slice (or pass the "
            "same pos_slice to the function that built it)."
        )
    return frozen_norm(stack, norm, scale)

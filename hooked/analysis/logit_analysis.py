"""Logits from cached activations: direct logit attribution and the logit lens.

Both read residual-stream components through the final norm the way the model does (see
`cache_analysis.apply_ln_to_stack`), then the unembedding. Split from cache_analysis.py, which builds
the stacks these functions consume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked.analysis.cache_analysis import Stack, _renormalize, accumulated_resid, apply_ln_to_stack

if TYPE_CHECKING:
    from hooked.analysis.activation_cache import ActivationCache


def logit_attrs(
    cache: ActivationCache,
    stack: Stack,
    tokens: str | int | list | Tensor,
    incorrect_tokens: str | int | list | Tensor | None = None,
    pos_slice: Any = None,
) -> Float[Tensor, "component ..."]:
    """Each component's direct contribution to the logit of `tokens` (minus that of `incorrect_tokens`).

    The stack is passed through the final norm as the model passes the residual: centered (LayerNorm)
    and divided by the cached `ln_final` scale, times the norm weight w, then dotted with W_U[:, token].
    For a full decomposition the sum over components is logits - b_U - (ln_final.b @ W_U)[token].
    TransformerLens omitted w (its models had it folded into W_U); with w folded, or w = 1, the two
    agree. `tokens` is one token (str or int) or a tensor/list of ids broadcasting against the stack's
    batch and position axes; a [batch] tensor against a stack with both axes is one token per
    example, for every position.
    """
    model = cache.model
    directions = model.tokens_to_residual_directions(tokens)  # W_U columns times ln_final.w
    if incorrect_tokens is not None:
        wrong = model.tokens_to_residual_directions(incorrect_tokens)
        if wrong.shape != directions.shape:
            raise ValueError(
                f"tokens and incorrect_tokens must have the same shape, got {tuple(directions.shape[:-1])} "
                f"and {tuple(wrong.shape[:-1])}."
            )
        directions = directions - wrong
    scaled = apply_ln_to_stack(cache, stack, None, False, pos_slice)
    if directions.ndim == 2 and cache.has_batch_dim and scaled.ndim == 4 and directions.shape[0] == scaled.shape[1]:
        directions = directions[:, None]  # [batch, d_model] -> shared by every position
    return (scaled * directions.to(scaled)).sum(-1)


def logit_lens(
    cache: ActivationCache,
    layer: int | None = None,
    incl_mid: bool = False,
    pos_slice: Any = None,
    mlp_input: bool = False,
    return_labels: bool = False,
) -> Float[Tensor, "component *batch_and_pos d_vocab"] | tuple[Tensor, list[str]]:
    """The logits the model would give if each accumulated residual ("0_pre" ... "final_post", as in
    `accumulated_resid`) were the final one: ln_final (weight and bias), then W_U and b_U.

    Each residual is normalized by its OWN statistics. The old recipe, accumulated_resid(apply_ln=True)
    @ W_U, divided every layer by the final layer's cached scale; the residual's norm grows with
    depth, so early layers came out mis-scaled (their logits shrunk toward zero, their softmax too
    flat). The "final_post" entry equals the model's logits.
    """
    resid, labels = accumulated_resid(cache, layer, incl_mid, False, pos_slice, mlp_input, True)
    model, norm = cache.model, cache.model.ln_final
    # Computed where the cache lives (its device), with the model's weights brought there.
    w, b, b_U = (getattr(module, name, None) for module, name in ((norm, "w"), (norm, "b"), (model.unembed, "b_U")))
    # No final norm (normalization_type None; post-LN blocks, whose last block normalized): the stream as it is.
    normalized = resid if isinstance(norm, nn.Identity) else _renormalize(resid, norm)
    normalized = normalized * w.to(resid) if w is not None else normalized
    normalized = normalized + b.to(resid) if b is not None else normalized
    logits = F.linear(normalized, model.W_U.T.to(resid), None if b_U is None else b_U.to(resid))
    return (logits, labels) if return_labels else logits

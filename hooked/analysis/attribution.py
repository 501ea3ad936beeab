"""Attribution patching: every activation patch estimated at once from one backward pass.

Activation patching (`hooked.analysis.patching`) runs the model once per patched piece. Attribution patching
(Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed et al. 2023,
"Attribution Patching Outperforms Automated Circuit Discovery") replaces each of those runs by the
first-order Taylor expansion of the metric around the corrupted run:

    metric(corrupted with a patched to clean) - metric(corrupted)
        ~= sum over a's entries of (a_clean - a_corrupted) * d metric / d a |corrupted run

The gradient is the total derivative (through every later layer), taken once in the corrupted run,
so one clean forward, one corrupted forward and one backward give the estimate for every activation,
head, position and neuron together. The estimate is exact when the metric is linear in the patched
activation along the patch (e.g. a logit difference and `unembed.hook_in`, whose logits are an affine
function of it); it is rough when the patch crosses a nonlinearity hard (attention saturating, a norm
whose scale changes a lot), and patching the pieces of interest for real confirms it.

`attribution_patch` returns the elementwise products (the activation's own shape), as an
ActivationCache keyed by hook name; summing them over any set of entries gives the estimate for
patching those entries together. `attribute_heads` and `attribute_resid` do the usual sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooked.analysis.activation_cache import ActivationCache
from hooked.names import NamesFilter, name_predicate

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]
ResidComponent = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]


def attribution_patch(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    names_filter: NamesFilter = None,
) -> ActivationCache:
    """(clean - corrupted) * d metric / d activation (in the corrupted run), for each hooked activation.

    `names_filter` chooses the hook points as in `run_with_cache`. The default is every floating-point
    one except the per-head input copies (hook_attn_in, hook_q_input, hook_k_input, hook_v_input): with
    those hooked, ln1 runs once per copy, so its own hooks fire three times with a head axis; name the
    copies in the filter (without ln1's hooks) to attribute them.
    `metric(logits)` must return a scalar and be differentiable (e.g. a logit difference averaged over
    the batch). The model's parameters get no gradients; no hook outlives the call. Clean and
    corrupted tokens must have the same shape (unpadded).
    """
    clean_tokens, corrupted_tokens = clean_tokens.to(model.device), corrupted_tokens.to(model.device)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"Clean tokens {tuple(clean_tokens.shape)} and corrupted tokens {tuple(corrupted_tokens.shape)} must "
            "have the same shape to be patched position by position."
        )
    wanted = name_predicate(names_filter) if names_filter is not None else _default_filter
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=wanted)
    names = [name for name, act in clean_cache.items() if act.is_floating_point()]
    if not names:
        raise ValueError("names_filter selects no floating-point hook point.")

    corrupted: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}

    def open_to_gradient(activation: Tensor, hook) -> Tensor:
        # Adding a zero leaf makes d metric / d delta the total derivative with respect to the
        # activation, with no parameter needing gradients.
        if hook.name in corrupted or activation.shape != clean_cache[hook.name].shape:
            raise ValueError(
                f"{hook.name} fired more than once or with a new shape in the corrupted run (ln1's hooks do when "
                "the per-head input copies are hooked too); leave one of the two out of names_filter."
            )
        corrupted[hook.name] = activation.detach()
        deltas[hook.name] = torch.zeros_like(activation, requires_grad=True)
        return activation + deltas[hook.name]

    def keep_hooked_path(grad: Tensor, hook) -> None:
        # A backward hook makes components compute from the hooked value itself (not an equal fused
        # copy), so the gradient reaches every delta.
        return None

    with torch.enable_grad():
        fwd = [(name, open_to_gradient) for name in names]
        bwd = [(name, keep_hooked_path) for name in names]
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            value = metric(model(corrupted_tokens))
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError("metric must return a scalar tensor (e.g. average over the batch with .mean()).")
            grads = torch.autograd.grad(value.reshape(()), [deltas[name] for name in names], allow_unused=True)

    attributions = {}
    for name, grad in zip(names, grads, strict=True):
        clean, corrupt = clean_cache[name], corrupted[name]
        # Equal entries contribute nothing (also where both are -inf, as masked attention scores).
        difference = torch.where(clean == corrupt, torch.zeros_like(clean), clean - corrupt)
        attributions[name] = difference * grad if grad is not None else torch.zeros_like(difference)
    return ActivationCache(attributions, model)


_PER_HEAD_INPUTS = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def _default_filter(name: str) -> bool:
    return not name.endswith(_PER_HEAD_INPUTS)


def attribute_heads(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    per_position: bool = False,
) -> Float[Tensor, "n_layers n_heads"] | Float[Tensor, "n_layers pos n_heads"]:
    """[n_layers, n_heads]: estimated effect of patching each head's output (hook_z) at every position,
    the estimate of `patching.get_act_patch_attn_head_out_all_pos`; with `per_position`,
    [n_layers, pos, n_heads] as `get_act_patch_attn_head_out_by_pos`."""
    attributions = attribution_patch(
        model, clean_tokens, corrupted_tokens, metric, lambda name: name.endswith("attn.hook_z")
    )
    z = torch.stack([attributions["z", layer] for layer in range(model.cfg.n_layers)])  # [layer, batch, pos, head, d]
    return z.sum((1, 4)) if per_position else z.sum((1, 2, 4))


def attribute_resid(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    component: ResidComponent = "resid_pre",
) -> Float[Tensor, "n_layers pos"]:
    """[n_layers, pos]: estimated effect of patching one layer's residual stream (or attn_out, mlp_out)
    at one position, the estimate of `patching.get_act_patch_resid_pre` (and its siblings)."""
    if component not in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        raise ValueError(f"component must be resid_pre, resid_mid, resid_post, attn_out or mlp_out; got {component!r}.")
    attributions = attribution_patch(
        model, clean_tokens, corrupted_tokens, metric, lambda name: name.endswith(f"hook_{component}")
    )
    stacked = torch.stack([attributions[component, layer] for layer in range(model.cfg.n_layers)])
    return stacked.sum((1, 3))


def attribute_block_every(
    model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric
) -> Float[Tensor, "3 n_layers pos"]:
    """[3, n_layers, pos]: resid_pre, attn_out and mlp_out estimates from one backward pass, the
    estimate of `patching.get_act_patch_block_every`."""
    components = ("resid_pre", "attn_out", "mlp_out")
    attributions = attribution_patch(
        model,
        clean_tokens,
        corrupted_tokens,
        metric,
        lambda name: name.endswith(tuple(f"hook_{c}" for c in components)),
    )
    return torch.stack(
        [torch.stack([attributions[c, layer] for layer in range(model.cfg.n_layers)]).sum((1, 3)) for c in components]
    )

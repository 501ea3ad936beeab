"""Attention patterns and norm scales frozen, so that gradients see the model's linear local map.

Attribution graphs (Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language
Models"; circuit-tracer) treat each attention pattern and each norm's scale as a constant, computed on the
real input: with them frozen, attention is linear in its values and every norm is linear in its input, so
the gradient of an output with respect to the residual stream is the Jacobian of that linear model, and
contributions along paths add up exactly. The forward numbers do not change.

Every `attn.hook_pattern` and every `hook_scale` (block norms, post-norms, the final norm, q/k norms) is
detached by a hook, for as long as the context lasts; a pass run inside it keeps its frozen graph after.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor


def _detach(activation: Tensor, hook) -> Tensor:
    return activation.detach()


@contextmanager
def frozen(model, patterns: bool = True, norm_scales: bool = True):
    """Context manager: inside, the model's attention patterns (`patterns`) and norm scales (`norm_scales`)
    are constants to autograd. Computing the patterns costs the explicit attention path instead of SDPA."""
    names = [
        name
        for name in model.hook_dict
        if (patterns and name.endswith("attn.hook_pattern")) or (norm_scales and name.endswith(".hook_scale"))
    ]
    with model.hooks(fwd_hooks=[(name, _detach) for name in names]):
        yield model

"""A mixture of experts' MLP output split by expert, the exact counterpart of `stack_neuron_results` for
models whose blocks route each token to a few experts (hooked/components/moe.py):

    mlp_out[l] = sum_e expert_write[l, e] + shared_out[l]

where expert e's write is its output times its router weight at the tokens that chose it and zero at the
others (from the cache's `mlp.hook_expert_out` and `mlp.hook_expert_indices`), and `shared_out` is the gated
shared expert's output, where the model has one. Labels: "L{l}E{e}" and "L{l}shared".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from hooked.analysis.cache_analysis import Part, Stack, _assemble, _resid_layer, _sliced

if TYPE_CHECKING:
    from hooked.analysis.activation_cache import ActivationCache


def _cached(cache: ActivationCache, name: str) -> Tensor:
    if name not in cache:
        raise ValueError(
            f"stack_expert_results needs {name}, which this cache does not hold: run run_with_cache with a "
            "names_filter that keeps the blocks' mlp.hook_expert_out and mlp.hook_expert_indices."
        )
    return cache[name]


def get_expert_results(cache: ActivationCache, layer: int, pos_slice: Any = None) -> Tensor:
    """Each expert's write to the residual in block `layer`, [*batch, pos, n_experts, d_model]: its output
    times its router weight where a token chose it, zero elsewhere. Their sum over experts (plus a shared
    expert's `mlp.hook_shared_out`) is the block's `hook_mlp_out`."""
    cfg = cache.model.cfg
    if not cfg.num_experts:
        raise ValueError("This model's MLPs are dense, with no experts: use get_neuron_results.")
    if cfg.block_norms != "pre":
        raise ValueError(f"Expert results through post-norms (block_norms={cfg.block_norms!r}) are not implemented.")
    layer = range(cfg.n_layers)[layer]
    out = _cached(cache, f"blocks.{layer}.mlp.hook_expert_out")  # [*batch, pos, k, d_model]
    indices = _cached(cache, f"blocks.{layer}.mlp.hook_expert_indices")  # [*batch, pos, k]
    dense = out.new_zeros(*out.shape[:-2], cfg.num_experts, out.shape[-1])
    dense.scatter_add_(-2, indices.unsqueeze(-1).expand_as(out).to(out.device), out)
    return _sliced(dense, pos_slice, dim=-3)


def stack_expert_results(
    cache: ActivationCache,
    layer: int | None = None,
    pos_slice: Any = None,
    return_labels: bool = False,
    apply_ln: bool = False,
) -> Stack | tuple[Stack, list[str]]:
    """Every expert's write ("L{l}E{e}") and shared expert's ("L{l}shared") in the blocks before residual
    `layer` (None: all of them), [component, *batch, pos, d_model]; each block's entries sum to its
    `hook_mlp_out` exactly (up to float rounding). `apply_ln` scales them by the cached scale of the norm
    reading residual `layer`, as `apply_ln_to_stack`."""
    layer = _resid_layer(cache, layer)
    shared = bool(cache.model.cfg.d_mlp_shared)
    parts: list[Part] = []
    for l in range(layer):
        experts = get_expert_results(cache, l, pos_slice).movedim(-2, 0)
        parts.append(([f"L{l}E{e}" for e in range(experts.shape[0])], experts))
        if shared:
            parts.append(([f"L{l}shared"], _sliced(_cached(cache, f"blocks.{l}.mlp.hook_shared_out"), pos_slice)[None]))
    return _assemble(cache, parts, layer, False, apply_ln, pos_slice, return_labels)

"""The local replacement model of attribution graphs: transcoders in place of MLPs, error terms as nodes.

Ameisen et al. 2025 ("Circuit Tracing") explain a prompt with a *replacement model*: each MLP's output is
written by a transcoder's features, plus an error term (what the transcoder misses on this prompt), so
the replacement's output is the model's own, exactly. With attention patterns and norm scales frozen
(`model.frozen()`), everything between features is linear, and a feature's direct effect on another is
a gradient.

`replaced_mlps(model, transcoders)` is that model as a context: the transcoders spliced in with their
error terms (`hook_sae_error` under each output hook is the error node, readable and editable like any
hook point), patterns and norm scales frozen, and gradients passing each MLP only the way the
replacement model says (`gradient`, as in `hooked.dictionaries.splice`): "skip", the attribution graph's
linear model (features constant to their inputs; a skip transcoder's `W_skip` path linear), or
"replacement", through the transcoders' encoders. `linear_skip` is the same rule for one tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

from torch import Tensor

from hooked.dictionaries import SAE


def linear_skip(output: Tensor, skip: Tensor | None) -> Tensor:
    """`output`'s value with `skip`'s gradient: gradients reach what produced `skip` (a transcoder's linear
    skip path) and nothing reaches what produced `output` (the MLP); a leaf `output` (a source whose own
    gradient is wanted) is used as it is. With no skip, `output` alone."""
    constant = output if output.is_leaf else output.detach()
    return constant if skip is None else constant + (skip - skip.detach())


def check_transcoders(model, transcoders: Iterable[SAE]) -> list[SAE]:
    """The transcoders as a list, each reading one hook of its block and writing another of the same block."""
    transcoders = list(transcoders)
    if not transcoders:
        raise ValueError("No transcoders given: pass one hooked.dictionaries SAE with hook_name_out per MLP.")
    for transcoder in transcoders:
        if not isinstance(transcoder, SAE) or not transcoder.is_transcoder:
            raise TypeError(
                f"{type(transcoder).__name__} is not a transcoder: replacing an MLP needs a hooked.dictionaries SAE "
                "reading the MLP's input and writing its output (hook_name != hook_name_out)."
            )
    return transcoders


@contextmanager
def replaced_mlps(model, transcoders: Iterable[SAE], gradient: str = "skip", freeze: bool = True):
    """Context manager: `model` as the local replacement model of `transcoders` (see the module docstring).
    Outputs equal the model's; `freeze=False` leaves attention patterns and norm scales live."""
    transcoders = check_transcoders(model, transcoders)
    with model.saes(transcoders, use_error_term=True, gradient=gradient):
        if freeze:
            with model.frozen():
                yield model
        else:
            yield model

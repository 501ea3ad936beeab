"""Loading a TransformerLens state dict: `model.load_state_dict(torch.load(path))` for a checkpoint that
TransformerLens's `HookedTransformer.state_dict()` wrote (ARENA's toy models, TransformerLens's own
attn-only / SoLU checkpoints).

Parameter names and layouts are already TransformerLens's. What its state dicts hold besides:

- constants its attention keeps as buffers (`mask`, `IGNORE`, and `rotary_sin` / `rotary_cos` for rotary
  models), which this library computes on the fly: they are dropped;
- `_W_K`, `_W_V`, `_b_K`, `_b_V`, the names of its grouped-query attention's key/value weights: renamed;
- every bias, whether or not the architecture has one (zeros where it has none). A bias this model lacks
  is dropped when it is all zeros (the model computes exactly that); a nonzero one is given to the model
  (every bias its config flag covers, zeros until loaded) and the flag set, as weight processing does.

Anything else that does not match stays for `load_state_dict` to report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hooked.components.attention import Attention
from hooked.processing import _require_biases

if TYPE_CHECKING:
    from hooked.model import HookedTransformer

DERIVED_BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")
RENAMED = {"_W_K": "W_K", "_W_V": "W_V", "_b_K": "b_K", "_b_V": "b_V"}
BIAS_FLAGS = {
    "b_Q": "attn_qkv_bias",
    "b_K": "attn_qkv_bias",
    "b_V": "attn_qkv_bias",
    "b_O": "attn_out_bias",
    "b_in": "mlp_bias",
    "b_gate": "mlp_bias",
    "b_out": "mlp_bias",
    "b_U": "unembed_bias",
}


def accept_transformerlens_keys(model: HookedTransformer, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A load_state_dict pre-hook on the model: rewrite `state_dict` (torch's copy) as described above."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        module, leaf = _owner(model, key[len(prefix) :])
        if isinstance(module, Attention) and leaf in DERIVED_BUFFERS and leaf not in module._buffers:
            del state_dict[key]
        elif isinstance(module, Attention) and leaf in RENAMED:
            state_dict[key[: -len(leaf)] + RENAMED[leaf]] = state_dict.pop(key)
    flags = set()
    for key in [k for k in state_dict if k.startswith(prefix)]:
        module, leaf = _owner(model, key[len(prefix) :])
        if leaf not in BIAS_FLAGS or module is None or not hasattr(module, leaf) or getattr(module, leaf) is not None:
            continue
        value = state_dict[key]
        if isinstance(value, torch.Tensor) and not bool((value == 0).all()):
            flags.add(BIAS_FLAGS[leaf])
        else:
            del state_dict[key]
    for flag in sorted(flags):
        _require_biases(model, flag)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """The submodule holding state-dict entry `name` and the entry's own name (None: no such module)."""
    path, _, leaf = name.rpartition(".")
    try:
        return model.get_submodule(path), leaf
    except AttributeError:
        return None, leaf

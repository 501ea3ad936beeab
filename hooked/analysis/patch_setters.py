"""Patch setters: write the clean value of one patching target into a corrupted activation.

Each receives one copy of the corrupted activation (edited in place), the target's index (layer
first, as in TransformerLens) and the whole clean activation. `hooked.analysis.patching` re-exports them
under TransformerLens's names.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def layer_pos_patch_setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
    """[batch, pos, ...] activations: one position (all of d_model)."""
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """[batch, pos, head, d_head] activations: one head at one position."""
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """[batch, pos, head, d_head] activations: one head at every position."""
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """[batch, head, query_pos, key_pos] patterns: one head's whole pattern."""
    _, head = index
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """[batch, head, query_pos, key_pos] patterns: one head's attention from one destination position."""
    _, head, dest_pos = index
    corrupted_activation[:, head, dest_pos] = clean_activation[:, head, dest_pos]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """[batch, head, query_pos, key_pos] patterns: one attention weight (destination, source)."""
    _, head, dest_pos, src_pos = index
    corrupted_activation[:, head, dest_pos, src_pos] = clean_activation[:, head, dest_pos, src_pos]
    return corrupted_activation

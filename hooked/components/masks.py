"""Positions and attention masks of a forward pass, from its attention mask and the key-value cache.

Positions count real tokens only, so a padded row gets the positions it would have alone; the masks
combine causality, padding and (on local layers) the sliding window. The model computes them once per
forward and hands them to every block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hooked.components.kv_cache import KVCache
from hooked.config import HookedTransformerConfig


def positions_and_masks(
    cfg: HookedTransformerConfig,
    attention_mask: Tensor | None,
    batch: int,
    n_new: int,
    device: torch.device,
    cache: KVCache | None = None,
) -> tuple[Tensor, dict[str, Tensor | None]]:
    """Positions of the new tokens (counting real tokens only) and the attention masks
    [batch, 1, n_new, past + n_new] of global and local layers, None where plain causal
    attention is right."""
    past = len(cache) if cache is not None else 0
    shapes = [(batch, n_new)] + ([(n_new,)] if batch == 1 else [])  # a 1-D mask goes with 1-D tokens
    if attention_mask is not None and tuple(attention_mask.shape) not in shapes:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the input is [batch={batch}, "
            f"pos={n_new}]; the mask needs one entry per input token (1 = real, 0 = padding)"
            + (", for the new tokens only when past_kv_cache is given." if cache is not None else ".")
        )
    new_mask = (
        torch.ones(batch, n_new, dtype=torch.long, device=device)
        if attention_mask is None
        else attention_mask.reshape(batch, n_new)
    )
    full_mask = cache.extend_mask(new_mask.to(device)) if cache is not None else new_mask.to(device)
    total = past + n_new
    if bool(full_mask.all()):
        positions = torch.arange(past, total, device=device).expand(batch, n_new)
        return positions, {"global": None, "local": _sliding(cfg, None, batch, n_new, total, device)}
    positions = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    causal = torch.ones(n_new, total, dtype=torch.bool, device=device).tril(past)
    mask = causal & full_mask.bool()[:, None, None, :]
    # A padding query that sees no key would softmax to NaN; let it see itself (its output is unused).
    itself = torch.zeros(n_new, total, dtype=torch.bool, device=device)
    itself[torch.arange(n_new), torch.arange(past, total)] = True
    mask = mask | itself
    return positions, {"global": mask, "local": _sliding(cfg, mask, batch, n_new, total, device)}


def _sliding(
    cfg: HookedTransformerConfig, mask: Tensor | None, batch: int, n_new: int, total: int, device: torch.device
) -> Tensor | None:
    """`mask` narrowed to the sliding window of a local layer (None where plain causal attention is right)."""
    window = cfg.sliding_window
    if window is None or total <= window:
        return mask
    query = torch.arange(total - n_new, total, device=device)
    in_window = (query[:, None] - torch.arange(total, device=device)[None, :]) < window
    if mask is None:
        causal = torch.ones(n_new, total, dtype=torch.bool, device=device).tril(total - n_new)
        mask = causal.expand(batch, 1, n_new, total)
    return mask & in_window

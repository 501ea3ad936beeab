"""The key-value cache for decoding: each layer's past keys and values, and which past tokens are real.

Buffers are allocated with spare room and doubled when full, so appending a step copies only the
new keys and values, not the whole past. The cache also keeps the attention mask of everything it
has seen, from which the model computes positions and masks for the next tokens (so left-padded
prompts decode exactly like unpadded ones).
"""

from __future__ import annotations

import contextlib

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooked.config import HookedTransformerConfig


class LayerKV:
    def __init__(self) -> None:
        self.keys: Tensor | None = None  # [batch, capacity, n_kv_heads, d_head]
        self.values: Tensor | None = None
        self.length = 0

    def append(
        self, k: Float[Tensor, "batch pos n_kv_heads d_head"], v: Float[Tensor, "batch pos n_kv_heads d_head"]
    ) -> tuple[Tensor, Tensor]:
        """Store new keys/values; return views of everything stored so far."""
        new_length = self.length + k.shape[1]
        if self.keys is None or new_length > self.keys.shape[1]:
            capacity = max(2 * new_length, 16)
            keys = k.new_empty(k.shape[0], capacity, *k.shape[2:])
            values = v.new_empty(v.shape[0], capacity, *v.shape[2:])
            if self.keys is not None:
                keys[:, : self.length] = self.keys[:, : self.length]
                values[:, : self.length] = self.values[:, : self.length]
            self.keys, self.values = keys, values
        self.keys[:, self.length : new_length] = k
        self.values[:, self.length : new_length] = v
        self.length = new_length
        return self.keys[:, :new_length], self.values[:, :new_length]


class KVCache:
    """Past keys and values for every layer of one model and one batch.

    Pass the same object to successive `model(tokens, past_kv_cache=cache)` calls; each call
    appends its tokens. `attention_mask` (1 = real token) covers all tokens seen so far.
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layers)]
        self.attention_mask: Int[Tensor, "batch pos"] | None = None

    @classmethod
    def for_model(cls, model) -> KVCache:
        return cls(model.cfg.n_layers)

    def check_fits(self, cfg: HookedTransformerConfig, dtype: torch.dtype, device: torch.device) -> None:
        """Refuse a cache made for another model (other layer count, key/value heads, head size, dtype or
        device): its keys would be mixed with this model's, or fail deep inside attention."""
        if len(self.layers) != cfg.n_layers:
            raise ValueError(
                f"This KVCache has {len(self.layers)} layers but the model has {cfg.n_layers}; it was made for "
                "another model. Make one for this model with KVCache.for_model(model)."
            )
        keys = self.layers[0].keys
        if keys is None:
            return
        expected = (cfg.n_key_value_heads, cfg.d_head)
        if tuple(keys.shape[2:]) != expected or keys.dtype != dtype or keys.device != device:
            raise ValueError(
                f"This KVCache holds keys of {keys.shape[2]} heads x {keys.shape[3]} ({keys.dtype}, {keys.device}) "
                f"but the model's are {expected[0]} heads x {expected[1]} ({dtype}, {device}); it was made for "
                "another model (or before model.to()). Make one for this model with KVCache.for_model(model)."
            )

    @contextlib.contextmanager
    def rollback_on_error(self):
        """Undo this block's appends if it raises, so a failed forward leaves the cache as it was."""
        mask, lengths = self.attention_mask, [layer.length for layer in self.layers]
        try:
            yield self
        except BaseException:
            self.attention_mask = mask
            for layer, length in zip(self.layers, lengths, strict=True):
                layer.length = length  # buffers keep their old contents up to the old length
            raise

    def __len__(self) -> int:
        """Number of positions stored."""
        return 0 if self.attention_mask is None else self.attention_mask.shape[1]

    def extend_mask(self, new_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch total_pos"]:
        """Append the new tokens' mask and return the mask of every position seen."""
        if self.attention_mask is not None and self.attention_mask.shape[0] != new_mask.shape[0]:
            raise ValueError(
                f"This cache holds a batch of {self.attention_mask.shape[0]} but the input has "
                f"{new_mask.shape[0]} rows; use a new KVCache for a new batch."
            )
        past = self.attention_mask
        self.attention_mask = new_mask if past is None else torch.cat([past, new_mask.to(past.device)], dim=1)
        return self.attention_mask

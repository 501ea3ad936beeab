"""TransformerLens's methods that code written for it calls on a model, beyond the forward pass: its first
step (`input_to_embed`), `loss_fn`, the total parameter count, and the `set_use_*` switches (every hook point works
here without them; they are recorded in cfg for code that reads them).

A mixin of `HookedTransformer`, kept apart so the model class stays the forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Int
from torch import Tensor

from hooked import tokenization
from hooked.analysis.losses import lm_cross_entropy_loss
from hooked.components.kv_cache import KVCache

if TYPE_CHECKING:
    from hooked.model import HookedTransformer


class TransformerLensMethods:
    def input_to_embed(
        self: HookedTransformer,
        input: str | list[str] | Int[Tensor, "batch pos"],
        prepend_bos: bool | None = None,
        padding_side: tokenization.PaddingSide | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        past_kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """TransformerLens's first step of the forward pass: (the residual entering block 0, the tokens, a
        shortformer model's position embedding or None, the attention mask or None where none is needed)."""
        if isinstance(input, (str, list)):
            tokens, attention_mask = tokenization.tokenize(self, input, prepend_bos, padding_side, truncate=False)
        else:
            tokens = input.unsqueeze(0) if input.ndim == 1 else input
            if attention_mask is None and past_kv_cache is None:
                attention_mask = tokenization.left_padding_mask(self, tokens)
        residual, positions, _ = self._embed(tokens, attention_mask, past_kv_cache)
        shortformer = None
        if self.cfg.positional_embedding_type == "shortformer":
            shortformer = self.hook_pos_embed(self.pos_embed(positions))
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        return residual, tokens.to(residual.device), shortformer, attention_mask

    def loss_fn(
        self: HookedTransformer,
        logits: Tensor,
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy of `logits` for `tokens` (TransformerLens's method; the forward pass's
        `return_type="loss"` computes the same)."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    @property
    def n_params_total(self: HookedTransformer) -> int:
        """Every parameter's element count (embeddings, biases and norms included); cfg.n_params counts
        only the attention and MLP weight matrices, TransformerLens's scaling-laws convention."""
        return sum(p.numel() for p in self.parameters())

    def set_use_attn_result(self: HookedTransformer, use_attn_result: bool) -> None:
        """Accepted for TransformerLens code; nothing to switch: hooks on attn.hook_result always work."""
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_split_qkv_input(self: HookedTransformer, use_split_qkv_input: bool) -> None:
        """Accepted for TransformerLens code; hook_q_input / hook_k_input / hook_v_input always work."""
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)

    def set_use_hook_mlp_in(self: HookedTransformer, use_hook_mlp_in: bool) -> None:
        """Accepted for TransformerLens code; hook_mlp_in always works."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

    def set_use_attn_in(self: HookedTransformer, use_attn_in: bool) -> None:
        """Accepted for TransformerLens code; hook_attn_in always works."""
        self.cfg.use_attn_in = bool(use_attn_in)

"""HookedTransformer: a decoder-only transformer in which every activation passes through a HookPoint.

The forward pass is the residual-stream equation, block by block (see `components/block.py`). Token
helpers live in `tokenization.py`, loading in the `loading` package; the methods here only delegate.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked import tokenization
from hooked.components.block import Block
from hooked.components.embeddings import Embed, PosEmbed, Rotary, Unembed
from hooked.components.norms import make_norm
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookedRootModule, HookPoint
from hooked.utils import lm_cross_entropy_loss

ReturnType = Literal["logits", "loss", "both"] | None


class HookedTransformer(HookedRootModule):
    def __init__(self, cfg: HookedTransformerConfig, tokenizer=None) -> None:
        """A randomly initialized model (use `from_pretrained` for trained weights)."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.default_prepend_bos = True
        self.default_padding_side: tokenization.PaddingSide = "right"

        self.hook_tokens = HookPoint()  # [batch, pos]
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        else:
            self.rotary = Rotary(cfg)
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)
        self.unembed = Unembed(cfg)
        if self.embed.W_E.device.type != "meta":
            self.init_weights()
        self.setup()

    def init_weights(self) -> None:
        """Normal(0, initializer_range) matrices, unit norm weights, zero biases."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "w":
                    param.fill_(1.0)
                elif leaf.startswith("b"):
                    param.zero_()
                else:
                    param.normal_(0.0, self.cfg.initializer_range)
        if self.cfg.tie_word_embeddings:
            self.unembed.W_U = nn.Parameter(self.embed.W_E.data.T)

    # ---- the forward pass -------------------------------------------------------------------

    def forward(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: tokenization.PaddingSide | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache=None,
        tokens: Int[Tensor, "batch pos"] | None = None,
    ):
        """Logits [batch, pos, d_vocab], the loss, both, None, or (with `stop_at_layer`) the residual.

        `start_at_layer` takes the residual stream entering that block as `input` (pass `tokens` for a
        loss). `stop_at_layer` is exclusive and may be negative. A padded batch needs `attention_mask`
        (computed for you from strings); positions then count real tokens only.
        """
        if past_kv_cache is not None:
            raise NotImplementedError("past_kv_cache is not supported yet; run the full sequence instead.")
        if isinstance(input, (str, list)):
            input, attention_mask = tokenization.tokenize(self, input, prepend_bos, padding_side, truncate=False)
        if start_at_layer is None:
            tokens = input
            residual, positions, mask = self._embed(tokens, attention_mask)
        else:
            residual = input
            positions, mask = self._positions_and_mask(attention_mask, *residual.shape[:2], residual.device)
        rotary = self.rotary(positions, residual.dtype) if hasattr(self, "rotary") else None
        for block in self.blocks[start_at_layer:stop_at_layer]:
            residual = block(residual, rotary, mask)
        if stop_at_layer is not None:
            return residual
        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise ValueError("A loss needs the tokens: pass tokens=... together with start_at_layer.")
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}.")

    def _embed(self, tokens: Tensor, attention_mask: Tensor | None):
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.is_floating_point():
            raise TypeError("Expected integer token ids (or pass start_at_layer to feed a residual stream).")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"Input has {tokens.shape[1]} tokens but the model's context is n_ctx={self.cfg.n_ctx}; "
                "truncate it (model.to_tokens(text, truncate=True)) or pass a shorter input."
            )
        tokens = self.hook_tokens(tokens.to(self.embed.W_E.device))
        positions, mask = self._positions_and_mask(attention_mask, *tokens.shape, tokens.device)
        residual = self.hook_embed(self.embed(tokens))
        if hasattr(self, "pos_embed"):
            residual = residual + self.hook_pos_embed(self.pos_embed(positions))
        return residual, positions, mask

    def _positions_and_mask(self, attention_mask: Tensor | None, batch: int, n_pos: int, device: torch.device):
        """Positions count real tokens; the mask is None when plain causal attention is right."""
        if attention_mask is None or bool(attention_mask.all()):
            positions = torch.arange(n_pos, device=device).expand(batch, n_pos)
            return positions, self._sliding(None, batch, n_pos, device)
        attention_mask = attention_mask.to(device).bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()
        mask = causal & attention_mask[:, None, None, :]
        # A padding query that sees no key would softmax to NaN; let it see itself (its output is unused).
        mask = mask | torch.eye(n_pos, dtype=torch.bool, device=device)
        return positions, self._sliding(mask, batch, n_pos, device)

    def _sliding(self, mask: Tensor | None, batch: int, n_pos: int, device: torch.device) -> Tensor | None:
        window = self.cfg.sliding_window
        if window is None or n_pos <= window:
            return mask
        idx = torch.arange(n_pos, device=device)
        in_window = (idx[:, None] - idx[None, :]) < window
        if mask is None:
            mask = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril().expand(batch, 1, n_pos, n_pos)
        return mask & in_window

    # ---- settings -----------------------------------------------------------------------------

    def set_attn_implementation(self, implementation: Literal["sdpa", "eager"]) -> None:
        """'sdpa' (default) uses torch's fused attention when no hook needs the pattern; 'eager' never does."""
        if implementation not in ("sdpa", "eager"):
            raise ValueError(f"implementation must be 'sdpa' or 'eager', got {implementation!r}.")
        for block in self.blocks:
            block.attn.use_sdpa = implementation == "sdpa"

    def set_tokenizer(self, tokenizer, default_padding_side: tokenization.PaddingSide | None = None) -> None:
        self.tokenizer = tokenizer
        if default_padding_side is not None:
            self.default_padding_side = default_padding_side

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    # ---- tokens (see tokenization.py) --------------------------------------------------------

    def to_tokens(self, input, prepend_bos=None, padding_side=None, truncate=True) -> Int[Tensor, "batch pos"]:
        return tokenization.tokenize(self, input, prepend_bos, padding_side, truncate)[0]

    def to_str_tokens(self, input, prepend_bos=None, padding_side=None):
        return tokenization.to_str_tokens(self, input, prepend_bos, padding_side)

    def to_string(self, tokens):
        return tokenization.to_string(self, tokens)

    def to_single_token(self, string: str) -> int:
        return tokenization.to_single_token(self, string)

    def to_single_str_token(self, token: int) -> str:
        return tokenization.to_str_tokens(self, torch.tensor([token]))[0]

    def get_token_position(self, single_token, input, mode="first", prepend_bos=None, padding_side=None) -> int:
        return tokenization.get_token_position(self, single_token, input, mode, prepend_bos, padding_side)

    # ---- loading (see the loading package) ---------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path=None, **kwargs) -> HookedTransformer:
        """Load a Hugging Face checkpoint (hub id, local folder, `.gguf` file, or `hf_model=`)."""
        from loading import load_pretrained

        return load_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_pretrained_no_processing(cls, name_or_path=None, **kwargs) -> HookedTransformer:
        """Same as from_pretrained: the defaults already apply no weight processing."""
        return cls.from_pretrained(name_or_path, **kwargs)

"""Token embedding, learned absolute positions and unembedding (rotary and ALiBi: `positional.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked.components.linear import linear
from hooked.components.norms import make_norm
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint


class Embed(nn.Module):
    """W_E[tokens], times embed_scale where the config has one (Gemma), then a norm `ln` where the
    config has post_embedding_ln (BLOOM; as in TransformerLens, the embedding's output is after it)."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.scale = cfg.embed_scale
        if cfg.post_embedding_ln:
            self.ln = make_norm(cfg.normalization_type, cfg.d_model, cfg.eps)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        embedded = F.embedding(tokens, self.W_E)
        if self.scale != 1.0:
            # The scale is rounded to the weights' dtype first, as Gemma's reference does.
            embedded = embedded * torch.tensor(self.scale, dtype=embedded.dtype, device=embedded.device)
        return self.ln(embedded) if hasattr(self, "ln") else embedded


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.W_pos)


class Unembed(nn.Module):
    """Logits = x @ W_U + b_U. An output_logits_soft_cap (Gemma 2) is applied after this module, by the model
    (TransformerLens's place for it), so hook_out sees the logits before the cap."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        # [d_model, d_vocab_out] in memory too, so `linear` splits only a tied W_U (W_E.T, Linear's layout): an
        # untied one in Linear's layout made MKL round differently across batch sizes (tests/test_patching.py).
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out)) if cfg.unembed_bias else None
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab_out]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab_out"]:
        return self.hook_out(linear(self.hook_in(x), self.W_U.T, self.b_U))

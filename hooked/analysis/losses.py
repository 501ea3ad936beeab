"""Language-model losses: next-token cross-entropy and accuracy (TransformerLens's `utils` had both)."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy (computed in float32). With a mask, the mean is over pairs of real tokens;
    per-token losses at padded positions are left as computed (mask them yourself)."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    if per_token:
        return losses
    if attention_mask is None:
        return losses.mean()
    mask = attention_mask.to(logits.device)
    valid = (mask[:, 1:] * mask[:, :-1]).to(losses.dtype)
    return (losses * valid).sum() / valid.sum()


def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
) -> Tensor:
    """Fraction of positions whose argmax is the next token."""
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


Loss = Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]  # a mean loss, or one per predicted token


class Output(NamedTuple):
    """Logits and loss together (TransformerLens's type for `return_type="both"`; a plain tuple unpacks the same)."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Loss

"""Choosing the next token from logits: greedy, temperature, top-k, top-p, frequency and repetition penalties."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def sample_logits(
    final_logits: Float[Tensor, "batch d_vocab"],
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[Tensor, "batch pos"] | None = None,
    generator: torch.Generator | None = None,
    repetition_penalty: float = 1.0,
) -> Int[Tensor, " batch"]:
    """One next token per row, sampled from the logits of the last position.

    Negative entries of `tokens` (padding) are not counted; `generator` makes sampling reproducible.

    The logits (in float32) of tokens occurring in their row of `tokens` are first divided by
    `repetition_penalty` where positive and multiplied by it where negative (Hugging Face's rule, from
    the CTRL paper). Then all are divided by `temperature`, and each token loses `freq_penalty` times
    the number of times it occurs in its row of `tokens`. `top_k` keeps the k largest; `top_p` keeps
    the smallest set of most likely tokens whose probability reaches p (both may be given: top_k
    first). `temperature == 0` is greedy: the argmax, after the frequency penalty.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    logits = final_logits.float()
    if repetition_penalty != 1.0:
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}.")
        if tokens is None:
            raise ValueError("repetition_penalty needs the tokens so far: pass tokens=...")
        seen = tokens.to(logits.device).reshape(logits.shape[0], -1)
        occurs = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, seen.clamp(min=0), seen >= 0)
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(occurs, penalized, logits)
    if temperature > 0:
        logits = logits / temperature
    if freq_penalty:
        if tokens is None:
            raise ValueError("freq_penalty needs the tokens so far: pass tokens=...")
        tokens = tokens.to(logits.device).reshape(logits.shape[0], -1)
        real = (tokens >= 0).to(logits.dtype)
        counts = torch.zeros_like(logits).scatter_add_(-1, tokens.clamp(min=0), real)
        logits = logits - freq_penalty * counts
    if temperature == 0:
        return logits.argmax(-1)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # a token is kept while the more likely ones have not reached p
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(-1), num_samples=1, generator=generator).squeeze(-1)

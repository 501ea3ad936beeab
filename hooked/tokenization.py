"""Text <-> tokens for a HookedTransformer: BOS handling, padding, and the attention mask.

We tokenize without the tokenizer's own special tokens and prepend BOS ourselves, so that
`prepend_bos` means the same for every family (TransformerLens's default is True). A batch of
strings is padded on `padding_side`; the attention mask returned beside the tokens marks real
tokens, and the model computes positions from it, so padding never changes a row's numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from hooked.model import HookedTransformer

PaddingSide = Literal["left", "right"]


def _tokenizer(model: HookedTransformer):
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer: pass token ids, or call model.set_tokenizer(tokenizer).")
    return model.tokenizer


def bos_token_id(tokenizer) -> int:
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("The tokenizer has neither a BOS nor an EOS token; call with prepend_bos=False.")


def pad_token_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return candidate
    return 0


def tokenize(
    model: HookedTransformer,
    input: str | list[str],
    prepend_bos: bool | None = None,
    padding_side: PaddingSide | None = None,
    truncate: bool = True,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokens and attention mask (1 = real token) for a string or a batch of strings."""
    tokenizer = _tokenizer(model)
    prepend_bos = model.default_prepend_bos if prepend_bos is None else prepend_bos
    padding_side = padding_side or model.default_padding_side
    texts = [input] if isinstance(input, str) else list(input)
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        bos = bos_token_id(tokenizer)
        rows = [[bos, *row] for row in rows]
    if truncate:
        rows = [row[: model.cfg.n_ctx] for row in rows]
    width = max(len(row) for row in rows)
    pad = pad_token_id(tokenizer)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        tokens[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return tokens.to(model.device), mask.to(model.device)


def to_str_tokens(
    model: HookedTransformer, input, prepend_bos: bool | None = None, padding_side: PaddingSide | None = None
) -> list[str] | list[list[str]]:
    """Each token as a string: a list for one input, a list of lists for a batch (padding included)."""
    tokenizer = _tokenizer(model)
    if isinstance(input, list) and input and isinstance(input[0], str):
        return [to_str_tokens(model, text, prepend_bos, padding_side) for text in input]
    if isinstance(input, str):
        tokens = tokenize(model, input, prepend_bos, padding_side)[0][0]
    else:
        tokens = torch.as_tensor(input)
    if tokens.ndim == 2:
        if tokens.shape[0] != 1:
            return [to_str_tokens(model, row) for row in tokens]
        tokens = tokens[0]
    return tokenizer.batch_decode(tokens.reshape(-1, 1).tolist(), clean_up_tokenization_spaces=False)


def to_string(model: HookedTransformer, tokens) -> str | list[str]:
    tokenizer = _tokenizer(model)
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 0:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim == 1:
        return tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
    return [tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]


def to_single_token(model: HookedTransformer, string: str) -> int:
    tokens = tokenize(model, string, prepend_bos=False)[0][0]
    if tokens.numel() != 1:
        pieces = to_str_tokens(model, tokens)
        raise ValueError(f"{string!r} is {tokens.numel()} tokens, not one: {pieces}.")
    return int(tokens.item())


def get_token_position(
    model: HookedTransformer,
    single_token: str | int,
    input: str | Tensor,
    mode: Literal["first", "last"] = "first",
    prepend_bos: bool | None = None,
    padding_side: PaddingSide | None = None,
) -> int:
    """Index of `single_token` in `input` (a string or a 1-row token tensor)."""
    if isinstance(input, str):
        tokens = tokenize(model, input, prepend_bos, padding_side)[0]
    else:
        tokens = torch.as_tensor(input)
    if tokens.ndim == 2:
        if tokens.shape[0] != 1:
            raise ValueError(f"get_token_position takes one sequence, got a batch of {tokens.shape[0]}.")
        tokens = tokens[0]
    token = to_single_token(model, single_token) if isinstance(single_token, str) else single_token
    hits = (tokens == token).nonzero().flatten()
    if hits.numel() == 0:
        raise ValueError(f"Token {single_token!r} does not occur in the input.")
    return int(hits[0] if mode == "first" else hits[-1])


def left_padding_mask(model: HookedTransformer, tokens: Tensor) -> Int[Tensor, "batch pos"] | None:
    """The attention mask of a token tensor given without one, by TransformerLens's rule: when the model
    pads on the left, the pad tokens a row starts with are padding, except that where the pad token is
    also the BOS (and BOS is prepended by default) the last of them is that BOS. None when nothing is
    padding, so an unpadded batch keeps the mask-free path."""
    if model.tokenizer is None or model.default_padding_side != "left" or tokens.ndim != 2:
        return None
    pad = pad_token_id(model.tokenizer)
    leading = (tokens != pad).long().cumsum(-1) == 0
    if model.default_prepend_bos and pad == bos_token_id(model.tokenizer):
        count = leading.sum(-1)
        rows = torch.nonzero(count > 0).squeeze(-1)
        leading[rows, count[rows] - 1] = False
    return None if not bool(leading.any()) else (~leading).long()

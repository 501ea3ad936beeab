"""Text <-> tokens for a HookedTransformer: BOS handling, padding, and the attention mask.

We tokenize without the tokenizer's own special tokens and prepend BOS ourselves, so that
`prepend_bos` means the same for every family (TransformerLens's default is True). A batch of
strings is padded on `padding_side`; the attention mask returned beside the tokens marks real
tokens, and the model computes positions from it, so padding never changes a row's numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from torch.utils.data import Dataset

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
    check_texts(input)
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


def check_texts(input: Any) -> None:
    """Refuse a list input that is empty or holds anything but strings, saying what to pass instead."""
    if isinstance(input, str):
        return
    if not input:
        raise ValueError("The input is an empty list: pass a string, a list of strings, or a tensor of token ids.")
    if not all(isinstance(text, str) for text in input):
        kinds = sorted({type(text).__name__ for text in input if not isinstance(text, str)})
        raise TypeError(
            f"A list input must hold strings, but it holds {', '.join(kinds)}; pass token ids as a tensor "
            "(torch.tensor(ids)), shape [batch, pos]."
        )


TOKEN_DTYPES = (torch.int64, torch.int32)  # what an embedding lookup takes


def check_tokens(tokens: Any, d_vocab: int) -> None:
    """Refuse anything but an integer tensor of token ids [pos] or [batch, pos], each in [0, d_vocab),
    with an error saying what to pass instead (torch's own errors come from deep inside the embedding)."""
    if not isinstance(tokens, Tensor):
        hint = " (torch.as_tensor(array) makes one from a numpy array)" if isinstance(tokens, np.ndarray) else ""
        raise TypeError(
            f"The model takes a string, a list of strings, or a tensor of token ids [batch, pos]; got "
            f"{type(tokens).__name__}{hint}."
        )
    if tokens.dtype not in TOKEN_DTYPES:
        hint = "pass start_at_layer to feed a residual stream" if tokens.is_floating_point() else "use tokens.long()"
        raise TypeError(f"Token ids must be an int64 or int32 tensor, got {tokens.dtype}; {hint}.")
    if tokens.ndim not in (1, 2):
        raise ValueError(
            f"Token ids must have shape [pos] or [batch, pos], got shape {tuple(tokens.shape)}"
            + ("; use tokens.reshape(1, -1) for one token." if tokens.ndim == 0 else ".")
        )
    if tokens.numel():
        low, high = torch.aminmax(tokens)
        if bool((low < 0) | (high >= d_vocab)):  # one device sync for both bounds
            raise ValueError(
                f"Token ids must be in [0, {d_vocab}) (the model's d_vocab), but they range from {int(low)} to "
                f"{int(high)}; were they made by another model's tokenizer?"
            )


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


def named_tokenizer(name: str):
    """The Hugging Face tokenizer a config's `tokenizer_name` names (TransformerLens loaded it the same way)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)  # never run code the hub names
    except (OSError, ValueError) as error:
        raise OSError(
            f"Could not load the tokenizer cfg.tokenizer_name={name!r}: {error}\nPass tokenizer= to "
            "HookedTransformer, or set tokenizer_name=None to build the model without a tokenizer."
        ) from error


class TokenMethods:
    """The model's token helpers (a mixin of HookedTransformer; each delegates to a function above)."""

    def to_tokens(
        self,
        input,
        prepend_bos=None,
        padding_side=None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids [batch, pos] of a string or a batch of strings, on the model's device (on the CPU with
        `move_to_device=False`); None for prepend_bos / padding_side means the model's default."""
        tokens = tokenize(self, input, prepend_bos, padding_side, truncate)[0]
        return tokens if move_to_device else tokens.cpu()

    def to_str_tokens(self, input, prepend_bos=None, padding_side=None):
        """Each token of `input` (a string, strings, or ids) as its own string: a list (a list of lists)."""
        return to_str_tokens(self, input, prepend_bos, padding_side)

    def to_string(self, tokens):
        """Token ids back to text: a string for one sequence, a list of strings for a batch."""
        return to_string(self, tokens)

    def to_single_token(self, string: str) -> int:
        """The id of `string`, which must be exactly one token (no BOS); otherwise an error says how many."""
        return to_single_token(self, string)

    def to_single_str_token(self, token: int) -> str:
        """The string of one token id."""
        return to_str_tokens(self, torch.tensor([token]))[0]

    def get_token_position(self, single_token, input, mode="first", prepend_bos=None, padding_side=None) -> int:
        """Where `single_token` (a string or an id) occurs in `input`: its first or last position (`mode`)."""
        return get_token_position(self, single_token, input, mode, prepend_bos, padding_side)


# ---- datasets of token rows (TransformerLens's utils.tokenize_and_concatenate) --------------------


class TokenDataset(Dataset):
    """Rows of tokens from `tokenize_and_concatenate`.

    `ds["tokens"]` is the [n_rows, max_length] tensor; `ds[i]` is `{"tokens": row i}` and `len(ds)`
    the number of rows, so a torch DataLoader yields `{"tokens": [batch, max_length]}` batches, as
    with the Hugging Face dataset TransformerLens returned.
    """

    column_names = ["tokens"]

    def __init__(self, tokens: Int[Tensor, "n_rows max_length"]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: str | int | slice) -> Any:
        if isinstance(index, str):
            if index != "tokens":
                raise KeyError(f"The only column is 'tokens', not {index!r}.")
            return self.tokens
        return {"tokens": self.tokens[index]}

    def __iter__(self):
        return ({"tokens": row} for row in self.tokens)

    def __repr__(self) -> str:
        return f"TokenDataset(n_rows={self.tokens.shape[0]}, max_length={self.tokens.shape[1]})"


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int | None = None,
) -> TokenDataset:
    """Tokenize every text, join them with EOS between texts, and cut the stream into rows of max_length.

    `dataset` is a string, a list of strings, or anything with a text column: a Hugging Face
    `datasets.Dataset` (`dataset[column_name]`), or, with `streaming=True` or when it cannot be
    indexed by column, any iterable of rows (dicts holding `column_name`, or strings). The
    `datasets` package is not needed. With `add_bos_token`, each row is BOS followed by
    max_length - 1 tokens of the stream. The tokens that do not fill a last row are dropped.
    Returns a `TokenDataset`: `result["tokens"]` is the [n_rows, max_length] int64 tensor.
    (`num_proc` is accepted for compatibility and ignored: a fast tokenizer already runs in parallel.)
    """
    texts = _texts(dataset, column_name, streaming)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pieces = [np.asarray(separator + row if i else row, dtype=np.int64) for i, row in enumerate(ids)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    row_length = max_length - 1 if add_bos_token else max_length
    if row_length < 1:
        raise ValueError(f"max_length={max_length} leaves no room for tokens after BOS.")
    n_rows = len(stream) // row_length
    if n_rows == 0:
        raise ValueError(f"The dataset has {len(stream)} tokens, fewer than one row of {row_length}; lower max_length.")
    tokens = torch.from_numpy(stream[: n_rows * row_length]).reshape(n_rows, row_length)
    if add_bos_token:
        bos = torch.full((n_rows, 1), bos_token_id(tokenizer), dtype=torch.long)
        tokens = torch.cat([bos, tokens], dim=1)
    return TokenDataset(tokens)


def _texts(dataset: Any, column_name: str, streaming: bool) -> list[str]:
    if isinstance(dataset, str):
        return [dataset]
    if isinstance(dataset, (list, tuple)) and all(isinstance(text, str) for text in dataset):
        return list(dataset)
    if not streaming:
        try:
            column = dataset[column_name]
        except (TypeError, KeyError, IndexError):
            column = None
        if column is not None and not isinstance(column, str):
            return [str(text) for text in column]
    return [row if isinstance(row, str) else row[column_name] for row in dataset]

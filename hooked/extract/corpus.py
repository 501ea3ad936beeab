"""A corpus as a stream of fixed-length token batches: what extraction feeds the model.

Texts are packed as `utils.tokenize_and_concatenate` packs them (TransformerLens's rule): each document
is tokenized without special tokens, documents are joined with EOS between them, the stream is cut into
rows of `context` tokens, and with `prepend_bos` every row is BOS followed by `context - 1` tokens of the
stream; the tokens that do not fill a last row are dropped. Here the packing streams (documents are
tokenized a chunk at a time), so a corpus need not fit in memory, and gives the same rows as
`tokenize_and_concatenate` on the same list.

Token rows given as tensors are used as they are, regrouped into batches of `batch_size` rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooked.tokenization import bos_token_id

TOKENIZE_CHUNK = 256  # documents per tokenizer call: a fast tokenizer batches them in parallel


@dataclass
class Batch:
    """`index`: the batch's place in the corpus (0, 1, 2...); `first_row`: the corpus row its first row is;
    `tokens` [batch, pos]; `mask` [batch, pos] (1 = a real token, 0 = padding)."""

    index: int
    first_row: int
    tokens: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]


def token_bytes(tokens: Tensor) -> bytes:
    """The tokens as little-endian int32, row-major: what the corpus hash is computed over."""
    return tokens.to(torch.int32).numpy().astype("<i4", copy=False).tobytes()


def split_corpus(corpus: Any, column: str = "text") -> tuple[str, Iterator[Any]]:
    """("texts", documents) or ("tokens", token batches): what kind of corpus this is, and its items.

    Texts: a path to a text file (one document per line, blank lines skipped), a list of strings, a
    Hugging Face `datasets` dataset or any iterable of dicts (their `column`). Tokens: a tensor, or an
    iterable of tensors or of dicts holding "tokens" (see `token_rows`).
    """
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(
                f"The corpus {str(corpus)!r} is no file. A string corpus names a text file (one document per "
                "line); pass a text itself as a list: [text]."
            )
        return "texts", _lines(path)
    if isinstance(corpus, Tensor):
        return "tokens", iter([corpus])
    iterator = iter(corpus)
    first = next(iterator, None)
    if first is None:
        raise ValueError("The corpus is empty: pass a text file, strings, a token tensor, or token batches.")
    items = itertools.chain([first], iterator)
    if isinstance(first, str):
        return "texts", items
    if isinstance(first, dict) and isinstance(first.get(column), str):
        return "texts", (row[column] for row in items)
    return "tokens", items


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as file:
        for line in file:
            line = line.rstrip("\n")
            if line.strip():
                yield line


def packed_rows(texts: Iterable[str], tokenizer, context: int, prepend_bos: bool) -> Iterator[np.ndarray]:
    """Rows of `context` int64 tokens, packed as `tokenize_and_concatenate` packs (module docstring)."""
    row_length = context - 1 if prepend_bos else context
    if row_length < 1:
        raise ValueError(f"context={context} leaves no room for tokens after BOS; use a longer context.")
    head = [bos_token_id(tokenizer)] if prepend_bos else []
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    stream: list[int] = []
    first = True
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, TOKENIZE_CHUNK)):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids if first else separator + ids)
            first = False
            start = 0
            while len(stream) - start >= row_length:
                yield np.asarray(head + stream[start : start + row_length], dtype=np.int64)
                start += row_length
            del stream[:start]


def token_rows(items: Iterable[Any]) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(row, mask row or None) from token batches: tensors [batch, pos] (or [pos], one row), or dicts with
    "tokens" (a DataLoader over `tokenize_and_concatenate`'s dataset) and optionally "attention_mask"."""
    for item in items:
        mask = None
        if isinstance(item, dict):
            if "tokens" not in item and "input_ids" not in item:
                raise ValueError(f"A batch dict needs 'tokens' (or 'input_ids'); it has {sorted(item)}.")
            mask = item.get("attention_mask")
            item = item["tokens"] if "tokens" in item else item["input_ids"]
        item = torch.as_tensor(item)
        if item.is_floating_point() or item.ndim not in (1, 2):
            raise ValueError(
                f"Token batches must be integer tensors [batch, pos] (or [pos]), got {item.dtype} of shape "
                f"{tuple(item.shape)}."
            )
        rows = item.reshape(-1, item.shape[-1]).long()
        masks = None if mask is None else torch.as_tensor(mask).reshape(rows.shape).long()
        for i, row in enumerate(rows):
            yield row, None if masks is None else masks[i]


def batches(
    corpus: Any,
    tokenizer,
    context: int | None,
    batch_size: int,
    prepend_bos: bool,
    column: str = "text",
    max_rows: int | None = None,
    text_context: int = 1024,
) -> Iterator[Batch]:
    """The corpus as batches of `batch_size` rows (the last may be shorter), numbered from 0; with
    `max_rows`, only the corpus's first rows. Texts are packed into rows of `context` tokens
    (`text_context` when it is None); token rows must be `context` wide (any one width when None)."""
    kind, items = split_corpus(corpus, column)
    if kind == "tokens":
        rows = token_rows(items)
    else:
        if tokenizer is None:
            raise ValueError("A text corpus needs the model's tokenizer: call model.set_tokenizer(...) first.")
        context = context or text_context
        rows = ((torch.from_numpy(row), None) for row in packed_rows(items, tokenizer, context, prepend_bos))
    if max_rows is not None:
        rows = itertools.islice(rows, max_rows)
    for index in itertools.count():
        group = list(itertools.islice(rows, batch_size))
        if not group:
            return
        widths = {len(row) for row, _ in group}
        if len(widths) != 1 or (context is not None and widths != {context}):
            want = f"context={context}" if context is not None else "one width"
            raise ValueError(f"Token rows must all have {want}; batch {index} has widths {sorted(widths)}.")
        tokens = torch.stack([row for row, _ in group])
        mask = torch.stack([torch.ones_like(row) if mask is None else mask for row, mask in group])
        yield Batch(index, index * batch_size, tokens, mask)

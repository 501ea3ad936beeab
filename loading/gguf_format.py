"""The GGUF container: metadata and tensor index parsed from the header, tensor bytes memory-mapped.

Format (little-endian, version 2 and 3): https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
  magic "GGUF", version u32, tensor count u64, metadata count u64;
  each metadata entry: key (string), value type u32, value (an array is element type u32, count u64, elements);
  each tensor: name (string), n_dims u32, dims u64 x n_dims (fastest axis first), type u32, offset u64;
  tensor data from the next multiple of `general.alignment` (default 32), each tensor at its offset.
A string is a u64 byte length and UTF-8 bytes.

`gguf.GGUFReader` reads the same, but builds a numpy view per array element: on a 262,144-token
vocabulary (Gemma 3) that takes ~10 s, where this parser takes a fraction of a second. Quantized data
is still dequantized by the `gguf` package (`gguf.quants.dequantize`).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# Value type -> struct format, for the scalar types (8 is a string, 9 an array).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy's order: the file's dims reversed (already Hugging Face's [out, in])
    type: GGMLQuantizationType
    data: np.ndarray  # the raw bytes, [rows, bytes per row], memory-mapped


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]  # arrays as lists
    tensors: dict[str, GGUFTensor]


class _Cursor:
    """Reads values one after another from a buffer."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer, self.at = buffer, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        text = self.buffer[self.at : self.at + n].decode("utf-8", errors="replace")
        self.at += n
        return text

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.scalar("I"), self.scalar("Q")
            if item in SCALARS:  # one read for the whole array
                fmt = f"<{n}{SCALARS[item]}"
                values = list(struct.unpack_from(fmt, self.buffer, self.at))
                self.at += struct.calcsize(fmt)
                return values
            return [self.value(item) for _ in range(n)]
        if kind not in SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.scalar(SCALARS[kind])


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; tensor data stays on disk, memory-mapped, until it is read."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # fails on an empty file
        return _parse(path, buffer)
    except (struct.error, KeyError, ValueError, OverflowError, MemoryError) as error:
        raise ValueError(f"{path} is not a readable GGUF file: {error}") from error


def _parse(path: Path, buffer: mmap.mmap) -> GGUFFile:
    cursor = _Cursor(buffer)
    if buffer[:4] != MAGIC:
        raise ValueError(f"it starts with {bytes(buffer[:4])!r}, not {MAGIC!r}")
    cursor.at = 4
    version = cursor.scalar("I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (a big-endian or too old file; versions 2 and 3 are read)")
    n_tensors, n_meta = cursor.scalar("Q"), cursor.scalar("Q")
    metadata = {}
    for _ in range(n_meta):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("I"))
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        dims = [cursor.scalar("Q") for _ in range(cursor.scalar("I"))]
        infos.append((name, dims, GGMLQuantizationType(cursor.scalar("I")), cursor.scalar("Q")))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-cursor.at // alignment) * alignment
    tensors = {}
    for name, dims, kind, offset in infos:
        if name in tensors:
            raise ValueError(f"tensor {name} appears twice")
        block, block_bytes = GGML_QUANT_SIZES[kind]
        row_bytes = dims[0] // block * block_bytes
        rows = int(np.prod(dims[1:], dtype=np.int64))
        if start + offset + rows * row_bytes > len(buffer):
            raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
        data = np.frombuffer(buffer, np.uint8, rows * row_bytes, start + offset).reshape(rows, row_bytes)
        tensors[name] = GGUFTensor(name, tuple(int(d) for d in reversed(dims)), kind, data)
    return GGUFFile(path, metadata, tensors)

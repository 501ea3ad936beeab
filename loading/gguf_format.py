"""The GGUF container: metadata and tensor index parsed from the header, tensor bytes memory-mapped.

Format (little-endian, version 2 and 3): https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
  magic "GGUF", version u32, tensor count u64, metadata count u64;
  each metadata entry: key (string), value type u32, value (an array is element type u32, count u64, elements);
  each tensor: name (string), n_dims u32, dims u64 x n_dims (fastest axis first), type u32, offset u64;
  tensor data from the next multiple of `general.alignment` (default 32), each tensor at its offset.
A string is a u64 byte length and UTF-8 bytes.

Every count in the header is checked against the bytes left in the file before anything is allocated
for it, so a crafted header (a count of 2**62 tensors, a string or array longer than the file, a
tensor of more elements than int64 counts) is refused in memory and time bounded by the file's size.

`gguf.GGUFReader` reads the same, but builds a numpy view per array element: on a 262,144-token
vocabulary (Gemma 3) that takes ~10 s, where this parser takes a fraction of a second. Quantized data
is still dequantized by the `gguf` package (`gguf.quants.dequantize`).
"""

from __future__ import annotations

import math
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
MAX_DIMS = 4  # GGML_MAX_DIMS: ggml tensors have at most four axes
MAX_NESTING = 4  # arrays of arrays deeper than this are refused (no real file has more than one level)
# The fewest bytes an element can take, by value type: a scalar its size, a string its length, an array
# its element type and count.
MIN_BYTES = {**{kind: struct.calcsize(fmt) for kind, fmt in SCALARS.items()}, STRING: 8, ARRAY: 12}
INT64_MAX = 2**63 - 1


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

    def room(self, count: int, each: int, what: str) -> None:
        """Refuse `count` items of at least `each` bytes where fewer bytes than that are left."""
        left = len(self.buffer) - self.at
        if count * each > left:
            raise ValueError(f"the header claims {count} {what}, more than the {left} bytes left in the file hold")

    def string(self) -> str:
        n = self.scalar("Q")
        self.room(n, 1, "bytes of string")
        text = self.buffer[self.at : self.at + n].decode("utf-8", errors="replace")
        self.at += n
        return text

    def value(self, kind: int, depth: int = 0):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            if depth >= MAX_NESTING:
                raise ValueError(f"arrays nested more than {MAX_NESTING} deep")
            item, n = self.scalar("I"), self.scalar("Q")
            if item not in MIN_BYTES:
                raise ValueError(f"unknown metadata value type {item}")
            self.room(n, MIN_BYTES[item], "array elements")
            if item in SCALARS:  # one read for the whole array
                fmt = f"<{n}{SCALARS[item]}"
                values = list(struct.unpack_from(fmt, self.buffer, self.at))
                self.at += struct.calcsize(fmt)
                return values
            return [self.value(item, depth + 1) for _ in range(n)]
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
    # A metadata entry takes at least 13 bytes (key length, type, a one-byte value), a tensor entry 24
    # (name length, axis count, type, offset).
    cursor.room(n_meta, 13, "metadata entries")
    metadata = {}
    for _ in range(n_meta):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("I"))
    cursor.room(n_tensors, 24, "tensors")
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.scalar("I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"tensor {name} has {n_dims} axes (ggml tensors have 1 to {MAX_DIMS})")
        dims = [cursor.scalar("Q") for _ in range(n_dims)]
        infos.append((name, dims, GGMLQuantizationType(cursor.scalar("I")), cursor.scalar("Q")))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
        raise ValueError(f"general.alignment is {alignment!r}; it must be a positive integer (the default is 32)")
    start = -(-cursor.at // alignment) * alignment
    tensors = {}
    for name, dims, kind, offset in infos:
        if name in tensors:
            raise ValueError(f"tensor {name} appears twice")
        # Python integers, not numpy's int64: a crafted shape's product must not wrap around to a small number.
        if math.prod(dims) > INT64_MAX:
            raise ValueError(f"tensor {name} has shape {dims}, more elements than int64 can count")
        block, block_bytes = GGML_QUANT_SIZES[kind]
        if dims[0] % block:
            raise ValueError(f"tensor {name}'s rows of {dims[0]} do not fill whole {kind.name} blocks of {block}")
        row_bytes = dims[0] // block * block_bytes
        rows = math.prod(dims[1:])
        if start + offset + rows * row_bytes > len(buffer):
            raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
        data = np.frombuffer(buffer, np.uint8, rows * row_bytes, start + offset).reshape(rows, row_bytes)
        tensors[name] = GGUFTensor(name, tuple(int(d) for d in reversed(dims)), kind, data)
    return GGUFFile(path, metadata, tensors)

"""Activation shards on disk: safetensors files of a fixed number of tokens, written so that a run can stop
at any moment and resume to the same bytes.

Each rank writes `shard-r{rank}-{index}.safetensors`, a file of `tokens_per_shard` tokens (its last one
fewer), holding one tensor per hook point [tokens, ...] and, per token, `token_ids`, `context` (the row of
the packed corpus) and `position` (in that row). A shard appears under its name only once complete: it is
written to a hidden temporary name, flushed to disk, then renamed (an atomic step on POSIX filesystems).

The shard's safetensors metadata (key "hooked", JSON) carries the run's settings (`plan`) and a `cursor`:
batch b and the count t of its tokens that this shard and the ones before it hold. Resuming skips the batches before b,
recomputes batch b, drops its first t tokens and carries on, so the shards after the interruption are
the ones an uninterrupted run writes (the same batches through the same computation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

INDEX_NAMES = ("token_ids", "context", "position")  # per-token bookkeeping stored beside the hook tensors
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank:04d}-{index:06d}.safetensors"


@dataclass(frozen=True)
class Cursor:
    """Batch `batch`'s first `taken` tokens, and everything of this rank's before it, are in the shards."""

    batch: int
    taken: int
    digest: str  # sha256 of the corpus's rows up to that batch's: a changed corpus is noticed on resume


def write_atomically(path: Path, write) -> None:
    """`write(temporary_path)`, flushed to disk, then renamed to `path`: a reader or a resumed run never
    sees a half-written file."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)


class ShardWriter:
    """Collects one rank's per-batch activations and writes them as shards of `tokens_per_shard` tokens.

    Built on a folder that already holds this rank's shards (an interrupted run), it continues after them:
    `cursor` says where, and a plan that differs from theirs is refused.
    """

    def __init__(self, folder: Path, rank: int, plan: dict, tokens_per_shard: int) -> None:
        if tokens_per_shard < 1:
            raise ValueError(f"tokens_per_shard must be at least 1, got {tokens_per_shard}.")
        self.folder, self.rank, self.plan, self.size = folder, rank, plan, tokens_per_shard
        self.pending: list[tuple[int, int, dict[str, Tensor]]] = []  # (batch, first token's index in it, tensors)
        self.pending_tokens = 0
        self.shards: list[dict] = []  # {"file", "rank", "tokens"} of every shard written, earlier runs' too
        self.hook_shapes: dict[str, dict] = {}  # name -> {"shape": per-token shape, "dtype"}
        self.cursor: Cursor | None = None
        self.digests: dict[int, str] = {}  # batch -> its digest, for the batches a cursor may name
        for stale in folder.glob(f".shard-r{rank:04d}-*.tmp"):
            stale.unlink()  # a shard being written when the run was killed: it is written again
        self._resume()

    def _resume(self) -> None:
        paths = sorted(self.folder.glob(f"shard-r{self.rank:04d}-*.safetensors"))
        for index, path in enumerate(paths):
            if path.name != shard_name(self.rank, index):
                raise RuntimeError(
                    f"{self.folder} has {path.name} but no {shard_name(self.rank, index)}: shards of this rank "
                    "are missing, so the run cannot resume. Delete the folder's shards, or extract into a new one."
                )
        for path in paths:
            with safe_open(path, framework="pt") as file:
                meta = file.metadata()
                names = [name for name in file.keys() if name not in INDEX_NAMES]
                for name in names:
                    piece = file.get_slice(name)
                    dtype = SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype())
                    self.hook_shapes[name] = {"shape": list(piece.get_shape()[1:]), "dtype": dtype}
                tokens = file.get_slice("token_ids").get_shape()[0]
            written = json.loads(meta["hooked"])
            check_plan(written["plan"], self.plan, path)
            self.shards.append({"file": path.name, "rank": self.rank, "tokens": tokens})
            self.cursor = Cursor(**written["cursor"])

    def add(self, batch: int, digest: str, tensors: dict[str, Tensor], first: int = 0) -> None:
        """This rank's tokens from batch `batch` (all hook tensors and the INDEX_NAMES, [tokens, ...]),
        beginning with its token number `first` (the ones before are already in shards)."""
        count = len(tensors["token_ids"])
        for name, tensor in tensors.items():
            if name not in INDEX_NAMES and name not in self.hook_shapes:
                dtype = str(tensor.dtype).removeprefix("torch.")
                self.hook_shapes[name] = {"shape": list(tensor.shape[1:]), "dtype": dtype}
        self.pending.append((batch, first, tensors))
        self.pending_tokens += count
        self.digests[batch] = digest
        while self.pending_tokens >= self.size:
            self._write(self.size)

    def close(self) -> None:
        """Write what is left (the rank's last, shorter shard)."""
        if self.pending_tokens:
            self._write(self.pending_tokens)

    def _write(self, count: int) -> None:
        parts: dict[str, list[Tensor]] = {}
        remaining = count
        while remaining:
            batch, first, tensors = self.pending[0]
            n = len(tensors["token_ids"])
            take = min(n, remaining)
            for name, tensor in tensors.items():
                parts.setdefault(name, []).append(tensor[:take])
            if take == n:
                self.pending.pop(0)
            else:
                self.pending[0] = (batch, first + take, {name: t[take:] for name, t in tensors.items()})
            remaining -= take
            end = (batch, first + take)
        self.pending_tokens -= count
        shard = {name: torch.cat(pieces).contiguous() for name, pieces in parts.items()}
        self.cursor = Cursor(end[0], end[1], self.digests[end[0]])
        # One metadata key: safetensors writes its metadata in hash-map order, which changes between runs,
        # so several keys would make identical shards differ in their header bytes.
        cursor = {"batch": self.cursor.batch, "taken": self.cursor.taken, "digest": self.cursor.digest}
        metadata = {"hooked": json.dumps({"plan": self.plan, "cursor": cursor}, sort_keys=True)}
        path = self.folder / shard_name(self.rank, len(self.shards))
        write_atomically(path, lambda temporary: save_file(shard, temporary, metadata=metadata))
        self.shards.append({"file": path.name, "rank": self.rank, "tokens": count})
        live = {batch for batch, _, _ in self.pending} | {self.cursor.batch}
        self.digests = {b: d for b, d in self.digests.items() if b in live}


def check_plan(found: dict, wanted: dict, where: Path) -> None:
    """Refuse to resume (or to reuse a finished run) under different settings, naming the first that differs."""
    for key in sorted(set(found) | set(wanted)):
        if found.get(key) != wanted.get(key):
            raise ValueError(
                f"{where} was written with {key}={found.get(key)!r}, but this run has {key}={wanted.get(key)!r}. "
                "Resume with the same settings, or extract into a new folder."
            )

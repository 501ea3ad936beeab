"""`ActivationShards`: the shards of an extraction run as one torch Dataset, memory-mapped, for training.

Reading needs neither a model nor this class: `manifest.json` lists the shards and shapes, and each shard
is a plain safetensors file (`safetensors.torch.load_file(path)[hook_name]`). This class adds one index
over all shards, memory-mapped through safetensors (nothing is read until it is indexed), and batches
shuffled across shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset


class ActivationShards(Dataset):
    """Every stored token's activation at one hook point, over all shards of a finished run.

    `ds[i]` is token i's activation (shards in the manifest's order, tokens in shard order); `ds[indices]`
    (a list or an int tensor) is a [len(indices), ...] batch, gathered shard by shard. `hook` may also be
    "token_ids", "context" or "position", the per-token bookkeeping every shard holds. For training,
    `ds.batches(batch_size, seed=...)` yields batches shuffled across all shards; a DataLoader does the
    same with `DataLoader(ds, batch_size=None, sampler=BatchSampler(RandomSampler(ds), size, False))`.
    """

    def __init__(self, folder: str | Path, hook: str | None = None) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"{manifest_path} does not exist: the run that writes {self.folder} has not finished. Run the "
                "same extraction again; it resumes where it stopped and writes the manifest at the end."
            )
        self.manifest = json.loads(manifest_path.read_text())
        hooks = self.manifest["hooks"]
        if hook is None:
            if len(hooks) != 1:
                raise ValueError(f"{self.folder} holds {len(hooks)} hook points; choose one with hook=: {hooks}.")
            hook = hooks[0]
        if hook not in (*hooks, "token_ids", "context", "position"):
            raise KeyError(f"{self.folder} holds no {hook!r}; its hook points are {hooks}.")
        self.hook = hook
        self.files = [self.folder / shard["file"] for shard in self.manifest["shards"]]
        sizes = torch.tensor([shard["tokens"] for shard in self.manifest["shards"]], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])  # shard s: [offsets[s], [s+1])
        self._tensors: list[Tensor] | None = None

    @property
    def tensors(self) -> list[Tensor]:
        """Each shard's tensor for `hook`, memory-mapped (opened on first use, so a worker process that
        receives a pickled copy maps the files itself)."""
        if self._tensors is None:
            tensors = []
            for path, expected in zip(self.files, self.offsets.diff().tolist(), strict=True):
                if not path.exists():
                    raise FileNotFoundError(f"{path}, listed in {self.folder / 'manifest.json'}, is missing.")
                with safe_open(path, framework="pt") as file:
                    tensor = file.get_tensor(self.hook)  # a view of the mapped file, not a copy
                if len(tensor) != expected:
                    raise ValueError(f"{path} holds {len(tensor)} tokens but the manifest says {expected}.")
                tensors.append(tensor)
            self._tensors = tensors
        return self._tensors

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tensors": None}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int | Sequence[int] | Tensor) -> Tensor:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"Token {index} is out of range for {len(self)} tokens.")
            return self[[index]][0]
        indices = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(indices) and (int(indices.min()) < -len(self) or int(indices.max()) >= len(self)):
            raise IndexError(f"Indices must be in [-{len(self)}, {len(self)}), got {indices.min()}..{indices.max()}.")
        indices = indices % max(len(self), 1)
        shard_of = torch.searchsorted(self.offsets, indices, right=True) - 1
        first = self.tensors[0]
        out = torch.empty((len(indices), *first.shape[1:]), dtype=first.dtype)
        for shard in shard_of.unique().tolist():
            chosen = shard_of == shard
            out[chosen] = self.tensors[shard][indices[chosen] - self.offsets[shard]]
        return out

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> Iterator[Tensor]:
        """Batches [batch_size, ...] in an order shuffled across all shards (a permutation of every token,
        from `seed`; memory: 8 bytes per token), or in storage order with `shuffle=False`."""
        if shuffle:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(len(self))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield self[order[start : start + batch_size]]

    def __repr__(self) -> str:
        shards = len(self.files)
        return f"ActivationShards({str(self.folder)!r}, hook={self.hook!r}, tokens={len(self)}, shards={shards})"

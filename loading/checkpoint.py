"""Where tensors come from: safetensors folders (single file or sharded), `pytorch_model.bin` folders (read
through torch's weights-only unpickler), and in-memory state dicts.

A checkpoint lists its tensor names and hands out one tensor at a time, so the loader never holds
more than the tensors it is converting (plus the model it is filling). `Checkpoint` names that
interface; `gguf.py` has the GGUF one.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import Tensor


class Checkpoint(Protocol):
    """What the converter needs of a checkpoint: the names of its tensors, and one tensor by name."""

    def names(self) -> list[str]:
        """Every tensor name the checkpoint holds, under Hugging Face's names."""
        ...

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name`, read without loading its data."""
        ...

    def get(self, name: str) -> Tensor:
        """The tensor `name`, as stored (the converter casts and places it)."""
        ...

    def close(self) -> None:
        """Release open files; the checkpoint is not used afterwards."""
        ...


class SafetensorsCheckpoint:
    """A folder of `.safetensors` files: one, several, or shards listed by `model.safetensors.index.json`.

    Every file a name maps to is inside the folder, and every tensor name is in exactly one file.
    """

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            self.files = _index_files(index)
        else:
            self.files = _unindexed_files(folder, sorted(folder.glob("*.safetensors")), _safetensors_keys)
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(file, "pt")
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> Tensor:
        return self._handle(name).get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint holds something other than tensors (objects whose unpickling would run code)."""


class TorchBinCheckpoint:
    """A folder of `pytorch_model.bin` files: one, or shards listed by `pytorch_model.bin.index.json`.

    Each file is read with torch's weights-only unpickler, which rebuilds tensors and plain containers
    and refuses any other object (unpickling one would run code from the file), and memory-mapped, so a
    tensor's data is read only when it is converted.
    """

    def __init__(self, folder: Path) -> None:
        index = folder / "pytorch_model.bin.index.json"
        self._loaded: dict[Path, dict[str, Tensor]] = {}
        if index.exists():
            self.files = _index_files(index)
        else:
            self.files = _unindexed_files(folder, sorted(folder.glob("pytorch_model*.bin")), lambda f: self._load(f))

    def _load(self, file: Path) -> dict[str, Tensor]:
        if file not in self._loaded:
            self._loaded[file] = _torch_load(file)
        return self._loaded[file]

    def names(self) -> list[str]:
        return list(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get(name).shape)

    def get(self, name: str) -> Tensor:
        file = self.files[name]
        tensors = self._load(file)
        if name not in tensors:
            raise FileNotFoundError(f"The shard index maps {name!r} to {file.name}, which does not hold it.")
        return tensors[name]

    def close(self) -> None:
        self._loaded.clear()


def _torch_load(file: Path) -> dict[str, Tensor]:
    """The state dict in a torch-saved file, through the weights-only unpickler (never arbitrary objects)."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # Files written before torch 1.6 (not zip archives) cannot be memory-mapped: read them whole.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{file} holds objects other than tensors, which only a full unpickler could rebuild, and unpickling "
            "runs code from the file; it was not loaded. If you trust its author, load it with transformers and "
            f"pass hf_model=, or convert it to safetensors. torch said: {error}"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{file} does not hold a state dict (tensors by name); it is not a model checkpoint.")
    return state


def open_checkpoint(folder: Path) -> SafetensorsCheckpoint | TorchBinCheckpoint:
    """The folder's weights: safetensors where it has them, else `pytorch_model*.bin` files."""
    if (folder / "model.safetensors.index.json").exists() or any(folder.glob("*.safetensors")):
        return SafetensorsCheckpoint(folder)
    if (folder / "pytorch_model.bin.index.json").exists() or any(folder.glob("pytorch_model*.bin")):
        return TorchBinCheckpoint(folder)
    found = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"No weights in {folder}: neither .safetensors files nor pytorch_model.bin (it holds: "
        f"{', '.join(found[:20]) + (' ...' if len(found) > 20 else '') or 'nothing'}). Save the model with "
        "transformers' `model.save_pretrained(folder)`."
    )


def _safetensors_keys(file: Path) -> list[str]:
    with safe_open(file, "pt") as handle:
        return list(handle.keys())


def _unindexed_files(folder: Path, files: Iterable[Path], keys: Callable[[Path], Iterable[str]]) -> dict[str, Path]:
    """Tensor name -> file, for weight files without a shard index; a name in two files is ambiguous."""
    found: dict[str, Path] = {}
    for file in files:
        for name in keys(file):
            if name in found:
                raise ValueError(
                    f"Tensor {name!r} is in both {found[name].name} and {file.name} in {folder}, "
                    "so which one to load is ambiguous; remove the stray file, or add a shard index "
                    "(model.safetensors.index.json) that maps each tensor to its file."
                )
            found[name] = file
    return found


def read_json(path: Path) -> Any:
    """The JSON in `path`; invalid JSON is an error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it from the original checkpoint.") from None


def _index_files(index: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from a shard index; every shard must exist inside the index's folder."""
    folder = index.parent
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(
            f'{index} has no "weight_map" object mapping tensor names to shard files; restore it from the '
            "original checkpoint, or delete it if the folder holds a single .safetensors file."
        )
    files = {}
    for name, file in weight_map.items():
        # Checked by name, not by resolving links: the hub cache's shards are links to files elsewhere.
        relative = Path(str(file))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(
                f"{index} maps {name!r} to {file!r}, which is outside the checkpoint folder; a shard index may "
                "only name files in its own folder."
            )
        if not (folder / relative).is_file():
            raise FileNotFoundError(f"{index} maps {name!r} to {file!r}, which is not in {folder} (a missing shard?).")
        files[name] = folder / relative
    return files


class StateDictCheckpoint:
    """Tensors of an in-memory model (`hf_model=`), copied so that editing ours never edits it."""

    def __init__(self, state_dict: dict[str, Tensor]) -> None:
        self.state_dict = state_dict

    def names(self) -> list[str]:
        return list(self.state_dict)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state_dict[name].shape)

    def get(self, name: str) -> Tensor:
        return self.state_dict[name].detach().clone()

    def close(self) -> None:
        pass


def rename(checkpoint: Checkpoint, mapping: dict[str, str]) -> Checkpoint:
    """A view of `checkpoint` under new names (used to add a missing base-model prefix)."""

    class Renamed:
        def names(self) -> list[str]:
            return list(mapping)

        def shape(self, name: str) -> tuple[int, ...]:
            return checkpoint.shape(mapping[name])

        def get(self, name: str) -> Tensor:
            return checkpoint.get(mapping[name])

        def close(self) -> None:
            checkpoint.close()

    return Renamed()

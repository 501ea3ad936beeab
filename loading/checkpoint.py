"""Where tensors come from: safetensors folders (single file or sharded) and in-memory state dicts.

A checkpoint lists its tensor names and hands out one tensor at a time, so the loader never holds
more than the tensors it is converting (plus the model it is filling). `Checkpoint` names that
interface; `gguf.py` has the GGUF one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

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

    Only safetensors is read (never pickle, which runs code on load). Every file a name maps to is
    inside the folder, and every tensor name is in exactly one file.
    """

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            self.files = _index_files(index)
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(
                    f"No .safetensors weights in {folder}. Convert the checkpoint with transformers' "
                    "`model.save_pretrained(folder)` (safetensors is its default format)."
                )
            self.files = {}
            for file in files:
                with safe_open(file, "pt") as handle:
                    for name in handle.keys():
                        if name in self.files:
                            raise ValueError(
                                f"Tensor {name!r} is in both {self.files[name].name} and {file.name} in {folder}, "
                                "so which one to load is ambiguous; remove the stray file, or add a "
                                "model.safetensors.index.json that maps each tensor to its file."
                            )
                        self.files[name] = file
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

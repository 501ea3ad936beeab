"""Where tensors come from: safetensors folders (single file or sharded) and in-memory state dicts.

A checkpoint lists its tensor names and hands out one tensor at a time, so the loader never holds
more than the tensors it is converting (plus the model it is filling). `Checkpoint` names that
interface; `gguf.py` has the GGUF one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from safetensors import safe_open
from torch import Tensor


class Checkpoint(Protocol):
    """What the converter needs of a checkpoint: the names of its tensors, and one tensor by name."""

    def names(self) -> list[str]:
        """Every tensor name the checkpoint holds, under Hugging Face's names."""
        ...

    def get(self, name: str) -> Tensor:
        """The tensor `name`, as stored (the converter casts and places it)."""
        ...

    def close(self) -> None:
        """Release open files; the checkpoint is not used afterwards."""
        ...


class SafetensorsCheckpoint:
    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: folder / file for name, file in weight_map.items()}
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
                    self.files.update({name: file for name in handle.keys()})
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> Tensor:
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(file, "pt")
        return self._handles[file].get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


class StateDictCheckpoint:
    """Tensors of an in-memory model (`hf_model=`), copied so that editing ours never edits it."""

    def __init__(self, state_dict: dict[str, Tensor]) -> None:
        self.state_dict = state_dict

    def names(self) -> list[str]:
        return list(self.state_dict)

    def get(self, name: str) -> Tensor:
        return self.state_dict[name].detach().clone()

    def close(self) -> None:
        pass


def rename(checkpoint: Checkpoint, mapping: dict[str, str]) -> Checkpoint:
    """A view of `checkpoint` under new names (used to add a missing base-model prefix)."""

    class Renamed:
        def names(self) -> list[str]:
            return list(mapping)

        def get(self, name: str) -> Tensor:
            return checkpoint.get(mapping[name])

        def close(self) -> None:
            checkpoint.close()

    return Renamed()

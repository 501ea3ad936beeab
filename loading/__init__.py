"""Checkpoint formats and per-family adapters that turn Hugging Face checkpoints into HookedTransformers.

Installed as `hooked.loading` (the repository keeps it in its own top-level folder). Reading order:
`pretrained.py` (the entry point) -> `resolve.py` (a name to files) -> `convert.py` (files to a model,
through a family's `adapter.py` table in `families/`, with `transforms.py` reshaping each tensor) ->
`checkpoint.py` / `gguf.py` (the formats).
"""

from hooked.loading import families  # noqa: F401  (registers the adapters)
from hooked.loading.adapter import ADAPTERS, Adapter, UnsupportedConfigError, register
from hooked.loading.convert import CheckpointMismatchError, UnsupportedArchitectureError, build
from hooked.loading.pretrained import load_pretrained, pretrained_config

__all__ = [
    "ADAPTERS",
    "Adapter",
    "CheckpointMismatchError",
    "UnsupportedArchitectureError",
    "UnsupportedConfigError",
    "build",
    "load_pretrained",
    "pretrained_config",
    "register",
]

"""Checkpoint formats and per-family adapters that turn Hugging Face checkpoints into HookedTransformers."""

from loading import families  # noqa: F401  (registers the adapters)
from loading.adapter import ADAPTERS, Adapter, UnsupportedConfigError, register
from loading.pretrained import (
    CheckpointMismatchError,
    UnsupportedArchitectureError,
    build,
    load_pretrained,
)

__all__ = [
    "ADAPTERS",
    "Adapter",
    "CheckpointMismatchError",
    "UnsupportedArchitectureError",
    "UnsupportedConfigError",
    "build",
    "load_pretrained",
    "register",
]

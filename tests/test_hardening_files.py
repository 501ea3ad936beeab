"""Crafted and damaged checkpoint files: each is refused by name, in bounded memory, before anything is built.

Memory bounds are checked in a child process whose address space is capped a little above what it uses
once torch is imported (`resource.setrlimit(RLIMIT_AS)`): a loader that builds tables sized by a crafted
header runs out of memory there instead of answering. The files are written here: raw GGUF bytes by
`pack_gguf` (for headers `gguf.GGUFWriter` refuses to write), tiny models by conftest's `save_tiny`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import save_tiny, tiny_tokenizer
from gguf import GGUFWriter
from test_gguf_reader import gguf_name, tiny_hf, to_gguf_rows
from transformers import LlamaConfig

import hooked
from hooked import HookedTransformer
from hooked.loading import CheckpointMismatchError
from hooked.loading.gguf import read_gguf
from hooked.loading.gguf_format import open_gguf

REPO = Path(hooked.__file__).resolve().parent.parent
LLAMA = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
)


def run_capped(code: str, headroom_mb: int = 600, timeout: int = 120) -> str:
    """Run `code` in a child python whose address space may grow only `headroom_mb` past its size after
    importing hooked; return its stdout (the test fails on a crash, a MemoryError or the timeout)."""
    prelude = textwrap.dedent(
        f"""
        import resource
        import hooked, hooked.loading.pretrained  # torch and transformers mapped before the cap
        import transformers
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        cap = size + {headroom_mb} * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


# ---- GGUF -------------------------------------------------------------------------------------------------


def llama_gguf(path: Path, block_count: int = 2, head_count: int = 4) -> Path:
    """tiny_hf() as a llama GGUF whose block_count (a u64, as big as a crafted file likes) and head_count
    are given."""
    hf = tiny_hf()
    cfg = hf.config
    writer = GGUFWriter(path, "llama")
    writer.add_uint64("llama.block_count", block_count)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    for name, tensor in hf.state_dict().items():
        w = tensor.numpy()
        if name.endswith("q_proj.weight"):
            w = to_gguf_rows(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = to_gguf_rows(w, cfg.num_key_value_heads)
        writer.add_tensor(gguf_name(name), w.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("block_count", [10**6, 2**62])
def test_a_crafted_block_count_is_refused_in_bounded_memory(tmp_path, block_count):
    path = llama_gguf(tmp_path / "crafted.gguf", block_count=block_count)
    out = run_capped(
        f"""
        from hooked.loading.gguf import read_gguf
        try:
            read_gguf({str(path)!r})
        except ValueError as error:
            print(error)
        """
    )
    assert f"llama.block_count says {block_count} layers, but the file has tensors for 2" in out


def test_a_zero_head_count_is_refused_by_name(tmp_path):
    path = llama_gguf(tmp_path / "heads.gguf", head_count=0)
    with pytest.raises(ValueError, match=r"heads\.gguf: metadata llama\.attention\.head_count is 0; it must be a pos"):
        read_gguf(path)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def pack_gguf(metadata=(), tensors=(), n_meta=None, n_tensors=None, data=b"") -> bytes:
    """GGUF v3 bytes, written field by field so that counts and sizes can lie. `metadata`: (key, type id,
    packed value bytes); `tensors`: (name, dims, ggml type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, n_meta or len(metadata))
    for key, kind, value in metadata:
        out += _string(key) + struct.pack("<I", kind) + value
    for name, dims, kind, offset in tensors:
        out += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
    return out + b"\0" * (-len(out) % 32) + data


ARCH = ("general.architecture", 8, _string("llama"))
CRAFTED_HEADERS = {
    "tensor count": (pack_gguf([ARCH], n_tensors=2**62), "claims 4611686018427387904 tensors"),
    "metadata count": (pack_gguf([ARCH], n_meta=2**62), "claims 4611686018427387904 metadata entries"),
    "string length": (pack_gguf([("k", 8, struct.pack("<Q", 2**62))]), "claims 4611686018427387904 bytes of string"),
    "u8 array": (pack_gguf([("k", 9, struct.pack("<IQ", 0, 2**62))]), "claims 4611686018427387904 array elements"),
    "string array": (pack_gguf([("k", 9, struct.pack("<IQ", 8, 2**60))]), "claims 1152921504606846976 array elem"),
    "nested arrays": (pack_gguf([("k", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) * 10)]), "nested"),
    "alignment 0": (pack_gguf([ARCH, ("general.alignment", 4, struct.pack("<I", 0))]), "general.alignment is 0"),
    # 32 x 2**32 x 2**32 float32s: the last two axes' product wraps to 0 in int64, so no bytes would be read.
    "int64 overflow": (pack_gguf([ARCH], [("t.weight", [32, 2**32, 2**32], 0, 0)]), "more elements than int64"),
    "no axes": (pack_gguf([ARCH], [("t.weight", [], 0, 0)]), r"t\.weight has 0 axes"),
    "partial block": (pack_gguf([ARCH], [("t.weight", [33, 1], 2, 0)], data=b"\0" * 64), "whole Q4_0 blocks of 32"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_HEADERS))
def test_crafted_headers_are_refused_by_name(tmp_path, case):
    content, message = CRAFTED_HEADERS[case]
    path = tmp_path / "crafted.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"crafted\.gguf is not a readable GGUF file: .*{message}"):
        open_gguf(path)


def test_crafted_header_counts_cost_no_memory(tmp_path):
    path = tmp_path / "crafted.gguf"
    path.write_bytes(pack_gguf([("k", 9, struct.pack("<IQ", 8, 2**60))]))  # 2**60 strings in a 60-byte file
    out = run_capped(
        f"""
        from hooked.loading.gguf_format import open_gguf
        try:
            open_gguf({str(path)!r})
        except ValueError as error:
            print(error)
        """,
        headroom_mb=100,
    )
    assert "claims 1152921504606846976 array elements" in out


# ---- safetensors folders ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny(LlamaConfig(**LLAMA), folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(folder, target)
    return target


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_huge_layer_count_in_config_json_is_refused_in_bounded_memory(llama_dir, tmp_path):
    folder = copy_of(llama_dir, tmp_path)
    edit_json(folder / "config.json", num_hidden_layers=10**7)
    out = run_capped(
        f"""
        from hooked import HookedTransformer
        from hooked.loading import CheckpointMismatchError
        try:
            HookedTransformer.from_pretrained({str(folder)!r})
        except CheckpointMismatchError as error:
            print(error)
        """
    )
    assert "config.json's num_hidden_layers asks for 10000000 layers but the checkpoint has tensors for 2" in out


@pytest.mark.parametrize(
    "field, message",
    [
        ("hidden_size", "describes 544,000,000,000 weights"),
        ("intermediate_size", "describes 192,000,008,192 weights"),
    ],
)
def test_sizes_beyond_the_checkpoint_are_refused_before_the_model_is_built(
    llama_dir, tmp_path, monkeypatch, field, message
):
    folder = copy_of(llama_dir, tmp_path)
    edit_json(folder / "config.json", **{field: 10**9})
    built = []
    monkeypatch.setattr(HookedTransformer, "__init__", lambda self, *a, **k: built.append(a))
    with pytest.raises(CheckpointMismatchError, match=rf"{message} .* but the checkpoint holds only 19,616 numbers"):
        HookedTransformer.from_pretrained(folder)
    assert built == []  # refused before cls(cfg), even on the meta device


def test_a_tensor_in_two_unindexed_files_is_refused(llama_dir, tmp_path):
    folder = copy_of(llama_dir, tmp_path)
    shutil.copy(folder / "model.safetensors", folder / "model-extra.safetensors")
    with pytest.raises(ValueError, match=r"is in both model-extra\.safetensors and model\.safetensors .* ambiguous"):
        HookedTransformer.from_pretrained(folder)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    save_tiny(LlamaConfig(**LLAMA), folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").exists()
    return folder


@pytest.mark.parametrize("outside", ["../elsewhere/shard.safetensors", "/abs"])
def test_a_shard_index_may_not_point_outside_the_folder(sharded_dir, tmp_path, outside):
    folder = copy_of(sharded_dir, tmp_path)
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    name, shard = next(iter(weight_map.items()))
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(folder / shard, tmp_path / "elsewhere" / "shard.safetensors")  # a real file: the old loader read it
    target = str(tmp_path / "elsewhere" / "shard.safetensors") if outside == "/abs" else outside
    edit_json(index, weight_map={**weight_map, name: target})
    with pytest.raises(ValueError, match=rf"maps '{name}' to .* outside the checkpoint folder"):
        HookedTransformer.from_pretrained(folder)


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("config.json", "{not json", r"config\.json is not valid JSON"),
        ("model.safetensors.index.json", "{not json", r"model\.safetensors\.index\.json is not valid JSON"),
        ("model.safetensors.index.json", '{"metadata": {}}', r'index\.json has no "weight_map" object'),
        ("tokenizer_config.json", "{not json", r"tokenizer_config\.json is not valid JSON"),
    ],
)
def test_broken_json_files_are_named(sharded_dir, tmp_path, file, content, message):
    folder = copy_of(sharded_dir, tmp_path)
    tiny_tokenizer().save_pretrained(folder)
    (folder / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        HookedTransformer.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_a_dtype_that_cannot_hold_weights_is_refused(llama_dir, dtype):
    with pytest.raises(ValueError, match=rf"dtype {dtype} cannot hold model weights; use a floating-point dtype"):
        HookedTransformer.from_pretrained(llama_dir, dtype=dtype)


# ---- remote code ------------------------------------------------------------------------------------------

REMOTE_CODE = """
from pathlib import Path
Path(__file__).with_name("EXECUTED").write_text("the checkpoint's code ran")
from transformers import PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture
def remote_code_dir(llama_dir, tmp_path):
    folder = copy_of(llama_dir, tmp_path)
    edit_json(
        folder / "tokenizer_config.json",
        tokenizer_class="EvilTokenizer",
        auto_map={"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]},
    )
    (folder / "evil_tokenizer.py").write_text(REMOTE_CODE)
    return folder


def load_in_child(folder: Path, **kwargs) -> str:
    """from_pretrained in a child with stdin closed (a prompt cannot be answered), its error printed."""
    return run_capped(
        f"""
        from hooked import HookedTransformer
        try:
            HookedTransformer.from_pretrained({str(folder)!r}, **{kwargs!r})
            print("LOADED")
        except ValueError as error:
            print(error)
        """,
        headroom_mb=4000,
        timeout=60,
    )


def test_custom_tokenizer_code_is_not_run_and_no_prompt_is_shown(remote_code_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies trusted code
    out = load_in_child(remote_code_dir)
    assert "Do you wish to run the custom code" not in out  # transformers' interactive prompt
    assert f"{remote_code_dir / 'tokenizer_config.json'} asks to run custom Python code" in out
    assert "pass from_pretrained(..., trust_remote_code=True)" in out
    assert not (remote_code_dir / "EXECUTED").exists()
    assert not list((tmp_path / "modules").rglob("EXECUTED"))


def test_trust_remote_code_true_is_passed_to_transformers(remote_code_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies trusted code
    out = load_in_child(remote_code_dir, trust_remote_code=True)
    assert "LOADED" in out
    assert list((tmp_path / "modules").rglob("EXECUTED"))  # transformers ran its copy of the module

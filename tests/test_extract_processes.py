"""hooked.extract across processes: a run killed with SIGKILL in the middle of writing a shard resumes to
the bytes of an uninterrupted run, and `torchrun --nproc_per_node 2` (gloo, loopback) writes shards whose
union is the single-process run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import save_tiny, tiny_tokenizer
from safetensors.torch import load_file
from test_extract import shard_bytes, texts
from transformers import LlamaConfig

from hooked import HookedTransformer
from hooked.extract import ActivationShards, extract

pytestmark = pytest.mark.slow  # each test starts processes that import torch and transformers

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
SETTINGS = dict(context=16, batch_size=4, tokens_per_shard=50, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As the children run (torchrun gives each rank one thread), and fast on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama checkpoint folder with its tokenizer, and a text corpus file, for the child processes."""
    folder = tmp_path_factory.mktemp("extract")
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=48,
        max_position_embeddings=64,
    )
    save_tiny(config, folder / "model")
    tiny_tokenizer().save_pretrained(folder / "model")
    (folder / "corpus.txt").write_text("\n".join(texts(80)) + "\n")
    return folder


def child_env() -> dict[str, str]:
    """The children import what this process imports (this checkout, not another installed copy)."""
    path = [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import hooked.extract.shards as shards
    from hooked import HookedTransformer
    from hooked.extract import extract

    torch.set_num_threads(1)
    save_file, calls = shards.save_file, []

    def save_half_then_die(tensors, path, metadata=None):
        calls.append(path)
        save_file(tensors, path, metadata=metadata)
        if len(calls) == 3:  # the third shard: half of it reaches the disk, then the process is killed
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    shards.save_file = save_half_then_die
    model = HookedTransformer.from_pretrained(sys.argv[1]).eval()
    extract(model, sys.argv[2], {hooks}, sys.argv[3], **{settings})
    """
).format(hooks=HOOKS, settings=SETTINGS)


def test_a_run_killed_mid_shard_resumes_to_the_bytes_of_an_uninterrupted_run(checkpoint, tmp_path):
    corpus, out = checkpoint / "corpus.txt", tmp_path / "resumed"
    args = [sys.executable, "-c", KILLED_CHILD, str(checkpoint / "model"), str(corpus), str(out)]
    child = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == [
        ".shard-r0000-000002.safetensors.tmp",  # the half-written shard, never under its own name
        "shard-r0000-000000.safetensors",
        "shard-r0000-000001.safetensors",
    ]
    model = HookedTransformer.from_pretrained(checkpoint / "model").eval()
    resumed = extract(model, corpus, HOOKS, out, **SETTINGS)
    whole = extract(model, corpus, HOOKS, tmp_path / "whole", **SETTINGS)
    assert len(shard_bytes(out)) > 4
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")
    assert resumed == whole


def per_token(folder, names) -> dict[str, torch.Tensor]:
    """Every shard's tensors in `folder`, concatenated and sorted by (context, position)."""
    files = [load_file(path) for path in sorted(folder.glob("shard-*.safetensors"))]
    joined = {name: torch.cat([file[name] for file in files]) for name in [*names, "context", "position"]}
    order = torch.argsort(joined["context"] * 1000 + joined["position"])
    return {name: tensor[order] for name, tensor in joined.items()}


def test_torchrun_ranks_write_disjoint_shards_whose_union_is_the_single_process_run(checkpoint, tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [
        "-m",
        "hooked.extract",
        "--model",
        str(checkpoint / "model"),
        "--corpus",
        str(checkpoint / "corpus.txt"),
    ]
    command += [arg for hook in HOOKS for arg in ("--hook", hook)] + ["--out", str(out), "--context", "16"]
    command += ["--batch-size", "4", "--tokens-per-shard", "50", "--threads", "1", "--no-progress"]
    run = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    model = HookedTransformer.from_pretrained(checkpoint / "model").eval()
    single = extract(model, checkpoint / "corpus.txt", HOOKS, tmp_path / "one", **SETTINGS)
    two, one = per_token(out, HOOKS), per_token(tmp_path / "one", HOOKS)
    for name in [*HOOKS, "context", "position"]:
        assert torch.equal(two[name], one[name]), name
    for rank in (0, 1):  # rank r took batches r, r + 2, r + 4, ...
        contexts = torch.cat([load_file(path)["context"] for path in out.glob(f"shard-r000{rank}-*.safetensors")])
        assert len(contexts) and set((contexts // 4 % 2).tolist()) == {rank}
    manifest = ActivationShards(out, hook=HOOKS[0]).manifest
    assert manifest["world_size"] == 2 and {shard["rank"] for shard in manifest["shards"]} == {0, 1}
    for key in ("n_tokens", "n_contexts", "tokens_sha256", "hook_shapes"):
        assert manifest[key] == single[key], key
    assert len(ActivationShards(out, hook=HOOKS[1])) == single["n_tokens"]

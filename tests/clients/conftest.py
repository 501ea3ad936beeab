"""The client suites: SAELens and circuit-tracer, real packages, running on hooked through `hooked.compat`.

Each runs in its own environment (circuit-tracer needs transformers 4.57; see .ci/run), with
`--confcutdir=tests/clients`, so the main suite's conftest is not loaded here. `hooked.compat.install()`
runs before any test module imports a client, so their `import transformer_lens` gets hooked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable: fail fast, never hang
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny-model helpers

import hooked.compat  # noqa: E402

hooked.compat.install()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a tokenizer, saved as transformers saves one."""
    from tiny import save_tiny, tiny_tokenizer
    from transformers import GPT2Config

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1
    )
    save_tiny(config, folder)
    tokenizer.save_pretrained(folder)
    return folder

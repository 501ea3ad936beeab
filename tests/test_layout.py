"""The floor plan as users meet it: the loader is `hooked.loading` (a user's own `loading.py` cannot shadow
it), the module paths of earlier releases still name the same modules, and a subclass loads as itself."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import torch
from conftest import save_tiny
from transformers import GPT2Config

import hooked
from hooked import HookedTransformer


def tiny_gpt2_folder(tmp_path):
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    save_tiny(config, tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_a_notebook_folder_with_its_own_loading_module_still_loads_models(tmp_path):
    folder = tiny_gpt2_folder(tmp_path)
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    # A user's helper module of the same generic name; importing it would break the load.
    (notebook / "loading.py").write_text("raise ImportError('the user loading.py was imported')\n")
    script = textwrap.dedent(
        f"""
        import sys
        from hooked import HookedTransformer
        model = HookedTransformer.from_pretrained({str(folder)!r})
        assert "loading" not in sys.modules, "a top-level 'loading' module was imported"
        print(model.cfg.n_layers, type(model).__name__)
        """
    )
    # `python -c` puts the working directory first on sys.path, as a notebook's kernel does.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=notebook, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "HookedTransformer"]


MOVED = {
    "hooked.ablation": "hooked.analysis.ablation",
    "hooked.activation_cache": "hooked.analysis.activation_cache",
    "hooked.attribution": "hooked.analysis.attribution",
    "hooked.cache_analysis": "hooked.analysis.cache_analysis",
    "hooked.head_detection": "hooked.analysis.head_detection",
    "hooked.heatmaps": "hooked.viz.heatmaps",
    "hooked.kv_cache": "hooked.components.kv_cache",
    "hooked.logit_analysis": "hooked.analysis.logit_analysis",
    "hooked.patching": "hooked.analysis.patching",
    "hooked.visualization": "hooked.viz",
}


def test_earlier_module_paths_are_the_same_modules():
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from hooked.patching import get_act_patch_resid_pre  # the README's form
    from hooked.visualization import attention_html

    assert get_act_patch_resid_pre is importlib.import_module("hooked.analysis.patching").get_act_patch_resid_pre
    assert attention_html is importlib.import_module("hooked.viz.attention").attention_html
    assert hooked.patching is importlib.import_module("hooked.analysis.patching")


def test_utils_keeps_transformerlens_names():
    from hooked import utils

    for name in (
        "get_act_name",
        "lm_cross_entropy_loss",
        "lm_accuracy",
        "test_prompt",
        "to_numpy",
        "get_corner",
        "remove_batch_dim",
        "sample_logits",
        "tokenize_and_concatenate",
        "Slice",
        "gelu_new",
        "gelu_fast",
    ):
        assert callable(getattr(utils, name)), name


def test_from_pretrained_builds_the_class_it_is_called_on(tmp_path):
    class MyTransformer(HookedTransformer):
        pass

    folder = tiny_gpt2_folder(tmp_path)
    model = MyTransformer.from_pretrained(folder)
    assert type(model) is MyTransformer
    reference = HookedTransformer.from_pretrained(folder)
    tokens = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(tokens), reference(tokens))


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages by hand (for the loading/ -> hooked.loading mapping); a new
    sub-package missing from the list would be absent from a non-editable install."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(root).parts) for path in (root / "hooked").rglob("__init__.py")} | {
        "hooked.loading." + ".".join(p.parent.relative_to(root / "loading").parts)
        for p in (root / "loading").glob("*/__init__.py")
    }
    found |= {"hooked.loading"}
    assert found == listed

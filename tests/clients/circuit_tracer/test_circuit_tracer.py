"""circuit-tracer 0.5 (the real package, on transformers 4.57) on hooked, against the same run on the real
TransformerLens: one tiny model, one set of random transcoders, one prompt; the attribution graphs must
have the same nodes and the same edges.

Each backend runs in its own process (attribution_run.py), since `hooked.compat.install()` must come before
anything imports transformer_lens and the real package must not be imported at all in the hooked run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

RUN = Path(__file__).with_name("attribution_run.py")


def attribution(backend: str, out: Path, in_hook: str, out_hook: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(RUN), backend, str(out), in_hook, out_hook],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{backend} run failed:\n{result.stderr[-4000:]}"
    return torch.load(out / f"graph_{backend}.pt")


@pytest.mark.parametrize(
    ("in_hook", "out_hook"),
    [("hook_resid_mid", "hook_mlp_out"), ("mlp.hook_in", "mlp.hook_out")],  # CLT-style, and the replacement MLP's
)
def test_attribution_graph_equals_transformer_lens(tmp_path, in_hook, out_hook):
    reference = attribution("transformer_lens", tmp_path, in_hook, out_hook)
    ours = attribution("hooked", tmp_path, in_hook, out_hook)
    assert reference["hook_point_class"] == "transformer_lens.hook_points.HookPoint"
    assert ours["hook_point_class"] == "hooked.hook_points.HookPoint"  # the compat layer really served the run

    for name in ("input_tokens", "active_features", "logit_token_ids"):
        assert torch.equal(ours[name], reference[name]), name
    torch.testing.assert_close(ours["last_logits"], reference["last_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["activation_values"], reference["activation_values"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["logit_probabilities"], reference["logit_probabilities"], atol=1e-6, rtol=1e-5)

    adjacency = ours["adjacency_matrix"]
    assert int((adjacency != 0).sum()) > 100, "the graph is (almost) empty: backward hooks did not fire"
    torch.testing.assert_close(adjacency, reference["adjacency_matrix"], atol=1e-5, rtol=1e-4)


NATIVE = Path(__file__).with_name("native_run.py")


@pytest.mark.parametrize(("in_hook", "out_hook"), [("hook_resid_mid", "hook_mlp_out"), ("mlp.hook_in", "mlp.hook_out")])
def test_hookeds_own_attribution_graph_equals_circuit_tracers(tmp_path, in_hook, out_hook):
    """hooked.attribution_graph (no circuit-tracer or TransformerLens code in its process) against
    circuit-tracer 0.5 on real TransformerLens: same nodes, same edges, and the same viewer file."""
    from circuit_tracer.frontend.graph_models import Model

    reference = attribution("transformer_lens", tmp_path, in_hook, out_hook)
    result = subprocess.run(
        [sys.executable, str(NATIVE), str(tmp_path), in_hook, out_hook], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"native run failed:\n{result.stderr[-4000:]}"
    ours = torch.load(tmp_path / "graph_native.pt")
    assert ours["hooked_modules"] == []  # neither package was imported by hooked's own run

    for name in ("input_tokens", "active_features", "logit_token_ids"):
        assert torch.equal(ours[name].cpu(), reference[name].cpu()), name
    torch.testing.assert_close(ours["activation_values"], reference["activation_values"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["logit_probabilities"], reference["logit_probabilities"], atol=1e-6, rtol=1e-5)
    adjacency = ours["adjacency_matrix"]
    assert int((adjacency != 0).sum()) > 100
    torch.testing.assert_close(adjacency, reference["adjacency_matrix"], atol=1e-5, rtol=1e-4)
    assert ours["completeness_error"] < 1e-4  # each target's edges + its bias = its value, in our graph

    text = (tmp_path / "graph_native.json").read_text()
    viewer = Model.model_validate_json(text)  # circuit-tracer's own schema accepts our file
    expected = Model.model_validate_json((tmp_path / "graph_reference.json").read_text())
    assert {node.node_id for node in viewer.nodes} == {node.node_id for node in expected.nodes}
    ours_links = {(link["source"], link["target"]): link["weight"] for link in viewer.links}
    their_links = {(link["source"], link["target"]): link["weight"] for link in expected.links}
    assert ours_links.keys() == their_links.keys()
    for key, weight in their_links.items():
        assert abs(ours_links[key] - weight) <= 1e-5 + 1e-4 * abs(weight), key

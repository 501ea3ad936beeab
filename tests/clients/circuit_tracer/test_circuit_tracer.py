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

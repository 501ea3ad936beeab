"""The demos run end to end on the embedded default model and show what they claim."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))

pytestmark = pytest.mark.slow


def test_quickstart(tmp_path, capsys):
    import quickstart

    result = quickstart.main(out=tmp_path / "patterns.png")
    assert result["top"][0][0] == " Paris"
    best_layer, best_head = result["induction_heads"][0]
    assert result["induction_scores"][best_layer, best_head] > 0.5  # a real induction head, not noise
    assert result["ablated_loss"] > result["clean_loss"] + 1.0
    assert result["plot"].read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "Paris" in printed and "induction" in printed and "zero-ablated" in printed

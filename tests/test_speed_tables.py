"""The README's speed tables are what benchmarks/readme_table.py makes from the committed JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_equal_what_the_committed_json_gives():
    tables = readme_table()
    readme = (ROOT / "README.md").read_text()
    generated = tables.render(ROOT / "benchmarks" / "results")
    assert generated, "benchmarks/results/ holds no benchmark JSON"
    assert tables.replace_generated(readme, generated) == readme, (
        "README.md's speed tables differ from the JSON in benchmarks/results/: run python benchmarks/readme_table.py"
    )


def test_a_changed_result_changes_the_tables(tmp_path):
    tables = readme_table()
    results = ROOT / "benchmarks" / "results"
    for path in results.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    memory = json.loads((tmp_path / "cache_memory.json").read_text())
    memory["ratio_peak_to_held"]["median"] += 1.0
    (tmp_path / "cache_memory.json").write_text(json.dumps(memory))
    assert tables.render(tmp_path) != tables.render(results)
    with pytest.raises(ValueError, match="no generated section"):
        tables.replace_generated("# README without markers\n", "x")

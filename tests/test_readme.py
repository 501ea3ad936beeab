"""The README's two commands are the project's contract with a new user and with CI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_ci_runs_exactly_the_readme_test_command():
    demo, test = readme_commands()
    assert "pytest" in test and "demos/quickstart.py" in demo
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def test_commands_install_the_cpu_torch_first():
    for command in readme_commands():
        assert command.startswith("pip install torch==2.13.0 && ")
        assert (ROOT / command.split("python ")[-1].split()[0]).exists() or "pytest" in command

"""MkDocs hook: render the notebooks in demos/ as pages notebooks/<name>.md, without running a kernel.

Markdown cells are copied, code cells become Python blocks, and any stored text or PNG outputs follow
their cell (the notebooks are committed without outputs; tests/test_notebooks.py executes them).
"""

from __future__ import annotations

import json
from pathlib import Path

from mkdocs.structure.files import File

NOTEBOOKS = Path(__file__).resolve().parents[1] / "demos"


def notebook_markdown(path: Path) -> str:
    """The notebook at `path` as one Markdown page."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code" and source:
            parts.append(f"```python\n{source}\n```")
            parts.extend(_outputs(cell.get("outputs", [])))
    parts.append(f"*This page is `demos/{path.name}`; run it with `jupyter lab demos/{path.name}`.*")
    return "\n\n".join(parts) + "\n"


def _outputs(outputs: list[dict]) -> list[str]:
    shown = []
    for output in outputs:
        data = output.get("data", {})
        if output.get("output_type") == "stream":
            shown.append(f"```text\n{''.join(output['text']).rstrip()}\n```")
        elif "image/png" in data:
            shown.append(f"![output](data:image/png;base64,{''.join(data['image/png']).strip()})")
        elif "text/plain" in data:
            shown.append(f"```text\n{''.join(data['text/plain']).rstrip()}\n```")
    return shown


def on_files(files, config):
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=notebook_markdown(path)))
    return files

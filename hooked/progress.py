"""Progress bars for long work: loading, patching and ablation sweeps, generation, extraction.

`progress=None`, every caller's default, shows a bar where a person is watching, on a terminal or in a
Jupyter kernel, and never in logs or test output; True or False forces it. In a notebook the bar is tqdm's
widget when ipywidgets is installed (the `notebook` extra), else its plain text bar: tqdm's own automatic
choice warns "IProgress not found" in red instead, in every notebook without ipywidgets.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import std


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell), where stderr is no terminal."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def watched() -> bool:
    """Whether a person is likely watching: a Jupyter kernel, or stderr on a terminal."""
    return in_notebook() or sys.stderr.isatty()


def progress_bar(iterable: Iterable | None = None, progress: bool | None = None, **kwargs: Any) -> std.tqdm:
    """A tqdm bar over `iterable` (or a manual one, with `total=`); kwargs go to tqdm (desc, unit, leave...)."""
    show = watched() if progress is None else bool(progress)
    if show and in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(iterable, **kwargs)
    return std.tqdm(iterable, disable=not show, **kwargs)

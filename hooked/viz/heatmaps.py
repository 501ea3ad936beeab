"""PNG heatmaps for patching grids, head scores and logit-lens tables, and a labelled scatter plot.

They draw with matplotlib's object API and return the `Figure` (a notebook shows it inline; `path=` also
writes a PNG), so they never touch pyplot's global state or the notebook's backend. With
`interactive=True` the heatmaps are plotly Figures instead, for hovering over cells (`interactive.py`;
plotly is optional). Every function takes tensors or numpy arrays; tensors are detached, cast to float
and moved to the CPU first. Token labels show leading spaces as "␣" (" Paris" reads "␣Paris").
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from plotly.graph_objects import Figure as PlotlyFigure

__all__ = ["plot_heatmap", "plot_layer_head_grid", "plot_layer_pos_grid", "plot_logit_lens_table", "plot_scatter"]


def _saved(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(Path(path), format="png", dpi=100)
    return fig


def _to_numpy(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values; pass finite numbers.")
    return array


def _check_labels(labels: Sequence[str] | None, size: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if len(labels) != size:
        raise ValueError(f"{what} has {len(labels)} labels but the data has {size} entries along that axis.")
    return labels


def visible_token(token: str) -> str:
    """A token as a label: leading spaces as "␣" (so " Paris" reads "␣Paris"), a newline as "\\n"."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    stripped = text.lstrip(" ")
    return "\u2423" * (len(text) - len(stripped)) + stripped


def _mathtext_safe(text: str) -> str:
    return text.replace("$", r"\$")  # "$" would start matplotlib mathtext


def _tick_label(token: str, position: int) -> str:
    return f"{visible_token(token)} {position}"


def _ink(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative luminance)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def plot_heatmap(
    values: Any,
    path: str | Path | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    cell_text: Sequence[Sequence[str]] | None = None,
    diverging: bool | None = None,
    interactive: bool = False,
) -> Figure | PlotlyFigure:
    """Draw a [rows, cols] array as a heatmap: a matplotlib Figure (shown inline in a notebook), written as a
    PNG to `path` when one is given.

    diverging: a red-white-blue scale centred on 0 (None: when any value is negative), else white to blue.
    cell_text: optional strings printed in the cells, `cell_text[row][col]` (e.g. top tokens), in black or
        white, whichever contrasts more with the cell.
    interactive: a plotly Figure instead (hover a cell for its labels and value; `path` then gets an HTML
        page). Needs plotly: `pip install "hooked-transformer[plotly]"`.
    """
    from matplotlib.figure import Figure

    array = _to_numpy(values, "values")
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"values must be a non-empty 2-d array [rows, cols], got shape {tuple(array.shape)}.")
    rows, cols = array.shape
    row_labels = _check_labels(row_labels, rows, "row_labels")
    col_labels = _check_labels(col_labels, cols, "col_labels")
    if cell_text is not None and (len(cell_text) != rows or any(len(row) != cols for row in cell_text)):
        raise ValueError(f"cell_text must be {rows} rows of {cols} strings, matching values.")
    if diverging is None:
        diverging = bool((array < 0).any())
    if diverging:
        bound = float(np.abs(array).max()) or 1.0
        cmap, vmin, vmax = "RdBu", -bound, bound
    else:
        cmap, vmin, vmax = "Blues", min(0.0, float(array.min())), float(array.max()) or 1.0
    if interactive:
        from hooked.viz.interactive import plotly_heatmap

        rows_shown = row_labels or [str(r) for r in range(rows)]
        cols_shown = col_labels or [str(c) for c in range(cols)]
        text = None if cell_text is None else [[str(t) for t in row] for row in cell_text]
        return plotly_heatmap(
            array, rows_shown, cols_shown, title, xlabel, ylabel, colorbar_label, text, diverging, path
        )

    cell_w, cell_h = (0.9, 0.32) if cell_text is not None else (0.38, 0.26)
    width = min(40.0, max(5.0, 2.5 + cell_w * cols))
    height = min(40.0, max(3.5, 1.8 + cell_h * rows))
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    image = ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.04)
    x_ticks = [_mathtext_safe(c) for c in col_labels or map(str, range(cols))]
    ax.set_xticks(range(cols), x_ticks, rotation=90 if col_labels else 0)
    ax.set_yticks(range(rows), [_mathtext_safe(r) for r in row_labels or map(str, range(rows))])
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if cell_text is not None:
        for r, c in itertools.product(range(rows), range(cols)):
            text = _mathtext_safe(str(cell_text[r][c]))
            ink = _ink(image.cmap(image.norm(array[r, c])))
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=ink)
    fig.tight_layout()
    return _saved(fig, path)


def plot_layer_pos_grid(
    values: Any,
    tokens: Sequence[str],
    path: str | Path | None = None,
    title: str = "",
    layer_labels: Sequence[str] | None = None,
    colorbar_label: str = "",
    interactive: bool = False,
) -> Figure | PlotlyFigure:
    """A [layers, positions] grid (e.g. residual-stream patching), positions labelled by their tokens
    (`interactive=True`: a plotly Figure, see `plot_heatmap`)."""
    array = _to_numpy(values, "values")
    if array.ndim != 2:
        raise ValueError(f"values must be [layers, positions], got shape {tuple(array.shape)}.")
    if len(tokens) != array.shape[1]:
        raise ValueError(f"values has {array.shape[1]} positions but {len(tokens)} tokens were given.")
    col_labels = [_tick_label(str(token), i) for i, token in enumerate(tokens)]
    return plot_heatmap(
        array, path, layer_labels, col_labels, title, "position", "layer", colorbar_label, interactive=interactive
    )


def plot_layer_head_grid(
    values: Any,
    path: str | Path | None = None,
    title: str = "",
    layer_labels: Sequence[str] | None = None,
    head_labels: Sequence[str] | None = None,
    colorbar_label: str = "",
    interactive: bool = False,
) -> Figure | PlotlyFigure:
    """A [layers, heads] grid: head patching results, head scores, ablation effects (`interactive=True`: a
    plotly Figure, see `plot_heatmap`)."""
    array = _to_numpy(values, "values")
    if array.ndim != 2:
        raise ValueError(f"values must be [layers, heads], got shape {tuple(array.shape)}.")
    return plot_heatmap(
        array, path, layer_labels, head_labels, title, "head", "layer", colorbar_label, interactive=interactive
    )


def plot_logit_lens_table(
    top_probs: Any,
    top_tokens: Sequence[Sequence[str]],
    path: str | Path | None = None,
    tokens: Sequence[str] | None = None,
    layer_labels: Sequence[str] | None = None,
    title: str = "Logit lens: top prediction after each layer",
    interactive: bool = False,
) -> Figure | PlotlyFigure:
    """A [layers, positions] table: each cell names the top token read from that residual stream and is
    shaded by its probability. `top_tokens[l][p]` is the string, `top_probs[l, p]` its probability.
    Tokens show leading spaces as "␣"; `interactive=True`: a plotly Figure (see `plot_heatmap`)."""
    array = _to_numpy(top_probs, "top_probs")
    if array.ndim != 2:
        raise ValueError(f"top_probs must be [layers, positions], got shape {tuple(array.shape)}.")
    col_labels = None
    if tokens is not None:
        if len(tokens) != array.shape[1]:
            raise ValueError(f"top_probs has {array.shape[1]} positions but {len(tokens)} tokens were given.")
        col_labels = [_tick_label(str(token), i) for i, token in enumerate(tokens)]
    return plot_heatmap(
        array,
        path,
        layer_labels,
        col_labels,
        title,
        "position (input token)",
        "residual stream",
        "probability",
        cell_text=[[visible_token(str(token)) for token in row] for row in top_tokens],
        diverging=False,
        interactive=interactive,
    )


def plot_scatter(
    x: Any,
    y: Any,
    path: str | Path | None = None,
    labels: Sequence[str] | None = None,
    n_labelled: int = 8,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """One point per (x, y) pair, with the y = x diagonal, labelling the `n_labelled` points farthest from
    the origin (e.g. comparing two estimates of each head's effect). A Figure, saved to `path` if given."""
    from matplotlib.figure import Figure

    x, y = _to_numpy(x, "x").ravel(), _to_numpy(y, "y").ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must hold the same non-zero number of values, got {x.size} and {y.size}.")
    labels = _check_labels(labels, x.size, "labels")
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.subplots()
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([low, high], [low, high], color="#999", linewidth=1, linestyle="--", label="y = x")
    ax.scatter(x, y, s=14, alpha=0.7)
    if labels is not None:
        for i in np.argsort(-np.hypot(x, y))[:n_labelled]:
            ax.annotate(
                labels[i].replace("$", r"\$"), (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _saved(fig, path)

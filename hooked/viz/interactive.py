"""Interactive (plotly) versions of the heatmaps, for hovering over a cell to read its labels and value.

Optional: plotly is not a dependency of hooked (`pip install "hooked-transformer[plotly]"`, also in the
`notebook` extra). `heatmaps.plot_*(..., interactive=True)` calls `plotly_heatmap`; the matplotlib
version stays the default, and both draw the same array with the same labels and colour scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def require_plotly() -> Any:
    """plotly.graph_objects, or an ImportError that names the extra to install."""
    try:
        import plotly.graph_objects as go
    except ImportError as error:
        raise ImportError(
            'interactive=True draws with plotly, which is not installed: pip install "hooked-transformer[plotly]" '
            "(or pip install plotly), or leave interactive=False for the matplotlib Figure."
        ) from error
    return go


def plotly_heatmap(
    array: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
    cell_text: list[list[str]] | None,
    diverging: bool,
    path: str | Path | None,
) -> Any:
    """A plotly Figure of `array` [rows, cols] (row 0 at the top); hovering a cell shows its row and column
    labels, its value and its `cell_text`. Written as a self-contained HTML page to `path` when given."""
    go = require_plotly()
    if diverging:
        bound = float(np.abs(array).max()) or 1.0
        scale = {"colorscale": "RdBu", "zmin": -bound, "zmax": bound}
    else:
        scale = {"colorscale": "Blues", "zmin": min(0.0, float(array.min())), "zmax": float(array.max()) or 1.0}
    # Labels can repeat (the same token twice), so the axes are indices and the labels are tick text.
    rows, cols = array.shape
    extra = cell_text if cell_text is not None else [[""] * cols for _ in range(rows)]
    custom = [[[row_labels[r], col_labels[c], extra[r][c]] for c in range(cols)] for r in range(rows)]
    hover = f"{ylabel or 'row'} %{{customdata[0]}}<br>{xlabel or 'column'} %{{customdata[1]}}<br>value %{{z:.4g}}"
    heatmap = go.Heatmap(
        z=array,
        x=list(range(cols)),
        y=list(range(rows)),
        customdata=custom,
        hovertemplate=hover + ("<br>%{customdata[2]}" if cell_text is not None else "") + "<extra></extra>",
        colorbar={"title": {"text": colorbar_label}},
        text=cell_text,
        texttemplate="%{text}" if cell_text is not None else None,
        **scale,
    )
    fig = go.Figure(heatmap)
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel)
    fig.update_xaxes(tickmode="array", tickvals=list(range(cols)), ticktext=col_labels)
    fig.update_yaxes(tickmode="array", tickvals=list(range(rows)), ticktext=row_labels, autorange="reversed")
    if path is not None:
        fig.write_html(Path(path), include_plotlyjs=True)
    return fig

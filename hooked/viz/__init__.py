"""Pictures, the top layer: the attention viewer (`attention.py`) and PNG heatmaps (`heatmaps.py`).

`hooked.visualization.attention.attention_patterns(tokens=..., attention=...)` and `.attention_heads(...)`
are CircuitsVis's calls (`cv.attention....`), so notebooks that used it need only the import changed.

Also importable as `hooked.visualization`, the name this package had before it was split.
"""

from hooked.viz import attention
from hooked.viz.attention import AttentionView, attention_heads, attention_html, attention_patterns
from hooked.viz.heatmaps import (
    plot_heatmap,
    plot_layer_head_grid,
    plot_layer_pos_grid,
    plot_logit_lens_table,
    plot_scatter,
)

__all__ = [
    "AttentionView",
    "attention",
    "attention_heads",
    "attention_html",
    "attention_patterns",
    "plot_heatmap",
    "plot_layer_head_grid",
    "plot_layer_pos_grid",
    "plot_logit_lens_table",
    "plot_scatter",
]

"""Pictures, the top layer: the attention viewer (`attention.py`) and PNG heatmaps (`heatmaps.py`).

Also importable as `hooked.visualization`, the name this package had before it was split.
"""

from hooked.viz.attention import AttentionView, attention_html, attention_patterns
from hooked.viz.heatmaps import (
    plot_heatmap,
    plot_layer_head_grid,
    plot_layer_pos_grid,
    plot_logit_lens_table,
    plot_scatter,
)

__all__ = [
    "AttentionView",
    "attention_html",
    "attention_patterns",
    "plot_heatmap",
    "plot_layer_head_grid",
    "plot_layer_pos_grid",
    "plot_logit_lens_table",
    "plot_scatter",
]

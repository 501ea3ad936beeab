"""An attention viewer in one HTML file, with no JavaScript toolchain.

The viewer plays the part CircuitsVis's `attention_patterns` played in TransformerLens
notebooks: tokens, a head selector, and on hovering a token, the attention it gives (as the query)
and receives (as a key). It is one self-contained HTML document (inline CSS and JS, no network, no
external library); `AttentionView` shows the same thing inline in a Jupyter notebook.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hooked.viz.heatmaps import _check_labels, _to_numpy

__all__ = ["AttentionView", "attention_heads", "attention_html", "attention_patterns"]


# ---- the attention viewer ------------------------------------------------------------------------

_view_ids = itertools.count()

_CSS = """
.hv-root { font-family: system-ui, sans-serif; font-size: 14px; color: #111; max-width: 1100px; }
.hv-root .hv-controls { margin: 4px 0 8px 0; }
.hv-root .hv-row { margin: 6px 0; line-height: 2.1; }
.hv-root .hv-caption { font-size: 12px; color: #555; margin-top: 8px; }
.hv-root .hv-tok { display: inline-block; white-space: pre; font-family: ui-monospace, monospace;
  border: 1px solid #ddd; border-radius: 3px; padding: 0 3px; margin: 1px; cursor: default;
  text-align: center; vertical-align: top; line-height: 1.3; }
.hv-root .hv-src .hv-tok:hover, .hv-root .hv-tok.hv-focus { outline: 2px solid #d62728; }
.hv-root .hv-w { display: block; font-size: 10px; color: #333; min-height: 12px; }
.hv-root canvas { border: 1px solid #ccc; margin-top: 6px; }
"""

# Plain ES5: runs in any browser and in Jupyter's output cells. It reads the JSON block that follows
# its container, so several viewers can live on one page.
_JS = """
(function () {
  var root = document.getElementById("%(id)s");
  var data = JSON.parse(document.getElementById("%(id)s-data").textContent);
  var select = root.querySelector("select");
  var src = root.querySelectorAll(".hv-src .hv-tok");
  var gives = root.querySelectorAll(".hv-gives .hv-tok");
  var recv = root.querySelectorAll(".hv-recv .hv-tok");
  var canvas = root.querySelector("canvas");
  var status = root.querySelector(".hv-status");
  var n = data.tokens.length, head = 0, focus = null, locked = false;
  function shade(w) { return "rgba(31, 119, 180, " + Math.max(0, Math.min(1, w)).toFixed(3) + ")"; }
  function ink(w) { return w > 0.55 ? "#fff" : "#111"; }
  function fill(cells, weights) {
    for (var i = 0; i < cells.length; i++) {
      var w = weights === null ? null : weights[i];
      cells[i].style.background = w === null ? "" : shade(w);
      cells[i].style.color = w === null ? "" : ink(w);
      cells[i].querySelector(".hv-w").textContent = w === null ? "" : w.toFixed(2);
      cells[i].classList.toggle("hv-focus", i === focus);
    }
  }
  function draw(p) {
    var ctx = canvas.getContext("2d"), size = canvas.width / n;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (var q = 0; q < n; q++) {
      for (var k = 0; k < n; k++) {
        ctx.fillStyle = shade(p[q][k]);
        ctx.fillRect(k * size, q * size, size, size);
      }
    }
    if (focus !== null) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(0, focus * size, canvas.width, size);
      ctx.strokeRect(focus * size, 0, size, canvas.height);
    }
  }
  function paint() {
    var p = data.patterns[head], col = [];
    if (focus !== null) { for (var q = 0; q < n; q++) { col.push(p[q][focus]); } }
    fill(src, null);
    fill(gives, focus === null ? null : p[focus]);
    fill(recv, focus === null ? null : col);
    draw(p);
    status.textContent = data.heads[head] + (focus === null ? ": hover a token" :
      ": token " + focus + (locked ? " (locked; click it again to unlock)" : " (click to lock)"));
  }
  for (var i = 0; i < src.length; i++) {
    (function (pos) {
      src[pos].addEventListener("mouseenter", function () { if (!locked) { focus = pos; paint(); } });
      src[pos].addEventListener("click", function () {
        locked = !(locked && focus === pos); focus = pos; paint();
      });
    })(i);
  }
  root.querySelector(".hv-src").addEventListener("mouseleave", function () {
    if (!locked) { focus = null; paint(); }
  });
  select.addEventListener("change", function () { head = parseInt(select.value, 10); paint(); });
  paint();
})();
"""


def _token_row(tokens: list[str], css_class: str, label: str) -> str:
    shown = [html.escape(token.replace("\n", "\\n")) for token in tokens]  # a newline token shows as \n
    cells = "".join(
        f'<span class="hv-tok" data-pos="{i}" title="position {i}">{text}<span class="hv-w"></span></span>'
        for i, text in enumerate(shown)
    )
    return f'<div class="hv-row {css_class}"><b>{html.escape(label)}</b><br>{cells}</div>'


def _json_for_script(obj: Any) -> str:
    # Inside <script> only "</" and "<!--" are dangerous; escaping every <, > and & keeps it plain text.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


class AttentionView:
    """An interactive view of attention patterns: `display(view)` in Jupyter, or `view.save(path)`.

    tokens: the n string tokens (keys and queries are the same n positions).
    pattern: [n_heads, n, n] or [n_layers, n_heads, n, n], query down and key across (as `hook_pattern`
        without its batch axis); each row is one query's attention over the keys.
    head_names: one name per head (flattened over layers); default "H{h}" or "L{l}H{h}".
    """

    def __init__(
        self,
        tokens: Sequence[str],
        pattern: Any,
        head_names: Sequence[str] | None = None,
        title: str = "Attention patterns",
        layer: int | None = None,
    ) -> None:
        self.tokens = [str(token) for token in tokens]
        array = _to_numpy(pattern, "pattern")
        n = len(self.tokens)
        if array.ndim == 4 and array.shape[0] == 1:
            # Most likely cache["pattern", layer] with its batch axis: read as one layer, its heads would be
            # labelled L0H*, whatever layer they came from.
            raise ValueError(
                f"pattern has shape {tuple(array.shape)}: its leading axis of size 1 looks like a batch axis. Pass "
                "cache['pattern', layer][0] (and layer=layer to label the heads), or stack several layers."
            )
        if array.ndim == 3:
            names = [f"H{h}" if layer is None else f"L{layer}H{h}" for h in range(array.shape[0])]
        elif array.ndim == 4:
            names = [f"L{layer}H{h}" for layer in range(array.shape[0]) for h in range(array.shape[1])]
            array = array.reshape(-1, *array.shape[2:])
        else:
            raise ValueError(
                f"pattern must be [n_heads, query_pos, key_pos] or [n_layers, n_heads, query_pos, key_pos], "
                f"got shape {tuple(array.shape)}. For a cached run, pass cache['pattern', layer][0] (drop the batch)."
            )
        if array.shape[1:] != (n, n):
            raise ValueError(
                f"pattern's query and key axes are {tuple(array.shape[1:])} but there are {n} tokens; "
                f"they must be ({n}, {n})."
            )
        if n == 0 or array.shape[0] == 0:
            raise ValueError("Nothing to show: the pattern has no heads or there are no tokens.")
        self.head_names = _check_labels(head_names, array.shape[0], "head_names") or names
        self.pattern = array
        self.title = title

    def _data(self) -> dict:
        return {"tokens": self.tokens, "heads": self.head_names, "patterns": np.round(self.pattern, 4).tolist()}

    def fragment(self) -> str:
        """The viewer as an HTML fragment (a div with its style and script), for embedding in a page."""
        data = self._data()
        digest = hashlib.sha1(json.dumps(data).encode()).hexdigest()[:8]
        view_id = f"hv{next(_view_ids)}-{digest}"
        options = "".join(f'<option value="{h}">{html.escape(name)}</option>' for h, name in enumerate(self.head_names))
        canvas_size = max(120, min(480, 14 * len(self.tokens)))
        return (
            f'<div class="hv-root" id="{view_id}"><style>{_CSS}</style>'
            f"<div><b>{html.escape(self.title)}</b></div>"
            f'<div class="hv-controls"><label>Head <select>{options}</select></label> '
            f'<span class="hv-status"></span></div>'
            + _token_row(self.tokens, "hv-src", "Tokens (hover one; click to lock):")
            + _token_row(self.tokens, "hv-gives", "Attention it gives (it is the query; weights over keys):")
            + _token_row(self.tokens, "hv-recv", "Attention it receives (it is the key; weight from each query):")
            + f'<canvas width="{canvas_size}" height="{canvas_size}"></canvas>'
            '<div class="hv-caption">Whole pattern of the selected head: query down, key across.</div>'
            + self._static_table()
            + f'<script type="application/json" id="{view_id}-data">{_json_for_script(data)}</script>'
            f"<script>{_JS % {'id': view_id}}</script></div>"
        )

    def _static_table(self) -> str:
        """The first head's pattern as a plain HTML table, shown where JavaScript is off (<noscript>)."""
        header = "".join(f"<th>{html.escape(token)}</th>" for token in self.tokens)
        rows = []
        for q, token in enumerate(self.tokens):
            cells = "".join(
                f'<td style="background: rgba(214, 39, 40, {weight:.3f})">{weight:.2f}</td>'
                for weight in self.pattern[0, q]
            )
            rows.append(f"<tr><th>{html.escape(token)}</th>{cells}</tr>")
        return (
            f"<noscript><p>{html.escape(self.head_names[0])} (query down, key across):</p>"
            f'<table class="hv-static"><tr><th></th>{header}</tr>{"".join(rows)}</table></noscript>'
        )

    def html(self) -> str:
        """A complete, self-contained HTML document."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title></head><body>{self.fragment()}</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return self.fragment()


def attention_html(
    tokens: Sequence[str],
    pattern: Any,
    path: str | Path | None = None,
    head_names: Sequence[str] | None = None,
    title: str = "Attention patterns",
) -> str:
    """One self-contained HTML page showing attention patterns; written to `path` when given.

    pattern: [n_heads, n, n] or [n_layers, n_heads, n, n] for the n `tokens` (see `AttentionView`).
    Returns the document. Example: `attention_html(model.to_str_tokens(text), cache["pattern", 3][0], "l3.html")`.
    """
    document = AttentionView(tokens, pattern, head_names, title).html()
    if path is not None:
        Path(path).write_text(document, encoding="utf-8")
    return document


def attention_patterns(
    tokens: Sequence[str], attention: Any, attention_head_names: Sequence[str] | None = None
) -> AttentionView:
    """CircuitsVis's `cv.attention.attention_patterns(tokens=..., attention=...)`, with its argument names, for
    notebooks that called it: an `AttentionView`, which Jupyter shows inline."""
    return AttentionView(tokens, attention, attention_head_names)


def attention_heads(
    attention: Any, tokens: Sequence[str], attention_head_names: Sequence[str] | None = None
) -> AttentionView:
    """CircuitsVis's `cv.attention.attention_heads(attention=..., tokens=...)`, with its argument names: the
    same `AttentionView` (one head at a time, chosen from the list)."""
    return AttentionView(tokens, attention, attention_head_names)

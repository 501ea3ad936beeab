"""An attention viewer in one HTML file, with no JavaScript toolchain.

The viewer plays the part CircuitsVis's `attention_patterns` and `attention_heads` played in
TransformerLens notebooks: a grid of every head's pattern (small multiples, each labelled with its head
and with the tokens along both axes), the chosen head large, and on hovering a token, the attention it
gives (as the query) and receives (as a key). It is one self-contained HTML document (inline CSS and JS, no network, no
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

from hooked.viz.heatmaps import _check_labels, _to_numpy, visible_token

__all__ = ["AttentionView", "attention_heads", "attention_html", "attention_patterns"]


# ---- the attention viewer ------------------------------------------------------------------------

_view_ids = itertools.count()

_CSS = """
.hv-root { font-family: system-ui, sans-serif; font-size: 14px; color: #111; max-width: 1100px; }
.hv-root .hv-controls { margin: 4px 0 8px 0; }
.hv-root .hv-row { margin: 6px 0; line-height: 2.1; }
.hv-root .hv-caption { font-size: 12px; color: #555; margin: 8px 0 4px 0; }
.hv-root .hv-tok { display: inline-block; white-space: pre; font-family: ui-monospace, monospace;
  border: 1px solid #ddd; border-radius: 3px; padding: 0 3px; margin: 1px; cursor: default;
  text-align: center; vertical-align: top; line-height: 1.3; }
.hv-root .hv-src .hv-tok:hover, .hv-root .hv-tok.hv-focus { outline: 2px solid #d62728; }
.hv-root .hv-w { display: block; font-size: 10px; color: #333; min-height: 12px; }
.hv-root .hv-grid { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-end; }
.hv-root .hv-panel { display: inline-block; border: 2px solid transparent; padding: 2px; }
.hv-root .hv-grid .hv-panel { cursor: pointer; }
.hv-root .hv-grid .hv-panel.hv-selected { border-color: #d62728; }
.hv-root .hv-label { font-weight: bold; font-size: 12px; }
.hv-root .hv-body { display: grid; grid-template-columns: auto auto; align-items: end; }
.hv-root .hv-corner { font-size: 9px; color: #555; text-align: right; padding: 0 2px 2px 0; }
.hv-root .hv-axis { display: flex; font-family: ui-monospace, monospace; line-height: 1; color: #333; }
.hv-root .hv-keys { flex-direction: row; align-items: flex-end; }
.hv-root .hv-queries { flex-direction: column; align-items: flex-end; }
.hv-root .hv-lab { white-space: pre; overflow: hidden; flex: none; }
.hv-root .hv-keys .hv-lab { writing-mode: vertical-rl; transform: rotate(180deg); max-height: 9em; }
.hv-root .hv-queries .hv-lab { max-width: 9em; padding-right: 2px; display: flex; align-items: center; }
.hv-root canvas { border: 1px solid #ccc; }
"""

# Plain ES5: runs in any browser and in Jupyter's output cells. It reads the JSON block that follows
# its container, so several viewers can live on one page. Each panel is a canvas with its tokens as
# DOM labels along both axes (query down the left, key along the top); the grid has one small panel per
# head, the view under it the selected head, large.
_JS = """
(function () {
  var root = document.getElementById("%(id)s");
  var data = JSON.parse(document.getElementById("%(id)s-data").textContent);
  var select = root.querySelector("select");
  var src = root.querySelectorAll(".hv-src .hv-tok");
  var gives = root.querySelectorAll(".hv-gives .hv-tok");
  var recv = root.querySelectorAll(".hv-recv .hv-tok");
  var grid = root.querySelector(".hv-grid"), one = root.querySelector(".hv-one");
  var status = root.querySelector(".hv-status");
  var n = data.tokens.length, head = 0, focus = null, locked = false, large = null, panels = [];
  var small = Math.max(3, Math.min(10, Math.floor(160 / n))), big = Math.max(8, Math.min(24, Math.floor(480 / n)));
  function shade(w) { return "rgba(31, 119, 180, " + Math.max(0, Math.min(1, w)).toFixed(3) + ")"; }
  function ink(w) { return w > 0.55 ? "#fff" : "#111"; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function axis(cls, cell) {
    var box = el("div", "hv-axis " + cls);
    box.style.fontSize = Math.max(5, Math.min(12, cell - 1)) + "px";
    for (var i = 0; i < n; i++) {
      var label = el("span", "hv-lab", data.labels[i]);
      label.title = "position " + i + ": " + JSON.stringify(data.tokens[i]);
      label.style[cls === "hv-keys" ? "width" : "height"] = cell + "px";
      box.appendChild(label);
    }
    return box;
  }
  function draw(canvas, p, cell, mark) {
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (var q = 0; q < n; q++) {
      for (var k = 0; k < n; k++) { ctx.fillStyle = shade(p[q][k]); ctx.fillRect(k * cell, q * cell, cell, cell); }
    }
    if (mark !== null) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(0, mark * cell, canvas.width, cell);
      ctx.strokeRect(mark * cell, 0, cell, canvas.height);
    }
  }
  function panel(h, cell) {
    var box = el("div", "hv-panel"), body = el("div", "hv-body"), canvas = el("canvas");
    box.setAttribute("data-head", String(h));
    box.appendChild(el("div", "hv-label", data.heads[h]));
    body.appendChild(el("span", "hv-corner", "query \\u2193 key \\u2192"));
    body.appendChild(axis("hv-keys", cell));
    body.appendChild(axis("hv-queries", cell));
    canvas.width = canvas.height = n * cell;
    body.appendChild(canvas);
    box.appendChild(body);
    draw(canvas, data.patterns[h], cell, null);
    return { box: box, canvas: canvas };
  }
  function fill(cells, weights) {
    for (var i = 0; i < cells.length; i++) {
      var w = weights === null ? null : weights[i];
      cells[i].style.background = w === null ? "" : shade(w);
      cells[i].style.color = w === null ? "" : ink(w);
      cells[i].querySelector(".hv-w").textContent = w === null ? "" : w.toFixed(2);
      cells[i].classList.toggle("hv-focus", i === focus);
    }
  }
  function paint() {
    var p = data.patterns[head], col = [];
    if (focus !== null) { for (var q = 0; q < n; q++) { col.push(p[q][focus]); } }
    fill(src, null);
    fill(gives, focus === null ? null : p[focus]);
    fill(recv, focus === null ? null : col);
    for (var h = 0; h < panels.length; h++) { panels[h].box.classList.toggle("hv-selected", h === head); }
    if (large === null || large.head !== head) {
      one.innerHTML = "";
      large = panel(head, big);
      large.head = head;
      large.canvas.addEventListener("mousemove", function (event) {
        var q = Math.floor(event.offsetY / big), k = Math.floor(event.offsetX / big);
        if (q >= 0 && q < n && k >= 0 && k < n) {
          status.textContent = data.heads[head] + ": query " + q + " " + JSON.stringify(data.tokens[q]) +
            " gives key " + k + " " + JSON.stringify(data.tokens[k]) + " " + data.patterns[head][q][k].toFixed(3);
        }
      });
      one.appendChild(large.box);
    }
    draw(large.canvas, p, big, focus);
    status.textContent = data.heads[head] + (focus === null ? ": hover a token" :
      ": token " + focus + (locked ? " (locked; click it again to unlock)" : " (click to lock)"));
  }
  for (var h = 0; h < data.heads.length; h++) {
    panels.push(panel(h, small));
    (function (chosen) {
      panels[chosen].box.addEventListener("click", function () {
        head = chosen; select.value = String(chosen); paint();
      });
    })(h);
    grid.appendChild(panels[h].box);
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
        return {
            "tokens": self.tokens,
            "labels": [visible_token(token) for token in self.tokens],
            "heads": self.head_names,
            "patterns": np.round(self.pattern, 4).tolist(),
        }

    def fragment(self) -> str:
        """The viewer as an HTML fragment (a div with its style and script), for embedding in a page."""
        data = self._data()
        digest = hashlib.sha1(json.dumps(data).encode()).hexdigest()[:8]
        view_id = f"hv{next(_view_ids)}-{digest}"
        options = "".join(f'<option value="{h}">{html.escape(name)}</option>' for h, name in enumerate(self.head_names))
        return (
            f'<div class="hv-root" id="{view_id}"><style>{_CSS}</style>'
            f"<div><b>{html.escape(self.title)}</b></div>"
            '<div class="hv-caption">Every head (query down, key across; click one to choose it):</div>'
            '<div class="hv-grid"></div>'
            f'<div class="hv-controls"><label>Head <select>{options}</select></label> '
            f'<span class="hv-status"></span></div>'
            '<div class="hv-one"></div>'
            + _token_row(self.tokens, "hv-src", "Tokens (hover one; click to lock):")
            + _token_row(self.tokens, "hv-gives", "Attention it gives (it is the query; weights over keys):")
            + _token_row(self.tokens, "hv-recv", "Attention it receives (it is the key; weight from each query):")
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

"""The attention viewer is one valid, offline HTML file carrying every token and head; the heatmaps are PNGs."""

from __future__ import annotations

import html
import json
import re
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from hooked import visualization as viz

TOKENS = ["<bos>", "<b>&", " cat", "\n", ' "sat"', "$x$"]
VOID = {"meta", "br", "input", "img", "hr", "link"}
PNG = b"\x89PNG\r\n\x1a\n"


class TreeChecker(HTMLParser):
    """Checks that tags nest and close, and collects text and the JSON data block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.text, self.data_blocks = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack, f"</{tag}> closes nothing"
        open_tag, _ = self.stack.pop()
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "script" and self.stack[-1][1].get("type") == "application/json":
            self.data_blocks.append(data)
        else:
            self.text.append(data)


def parse(document: str) -> TreeChecker:
    checker = TreeChecker()
    checker.feed(document)
    checker.close()
    assert checker.stack == [], f"unclosed tags: {[tag for tag, _ in checker.stack]}"
    return checker


def random_pattern(*lead: int, n: int = len(TOKENS)) -> torch.Tensor:
    scores = torch.randn(*lead, n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("lead", [(3,), (2, 3)], ids=["heads", "layers-heads"])
def test_attention_html_is_self_contained_and_complete(tmp_path, lead):
    pattern = random_pattern(*lead)
    path = tmp_path / "attention.html"
    document = viz.attention_html(TOKENS, pattern, path=path)
    assert path.read_text(encoding="utf-8") == document
    assert document.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", document), "the viewer must work offline"
    assert "<script src" not in document and "<link" not in document

    checker = parse(document)
    # Every token appears as visible, escaped text (never as raw markup).
    assert "&lt;b&gt;&amp;" in document and "<b>&" not in document.replace("<b>&lt;", "")
    shown = "".join(checker.text)
    for token in TOKENS:
        assert token.replace("\n", "\\n") in shown

    # The embedded data hold every head's full pattern.
    (block,) = checker.data_blocks
    data = json.loads(block)
    n_heads = int(np.prod(lead))
    names = [f"H{h}" for h in range(3)] if len(lead) == 1 else [f"L{l}H{h}" for l in range(2) for h in range(3)]
    assert data["heads"] == names and data["tokens"] == TOKENS
    np.testing.assert_allclose(np.array(data["patterns"]), pattern.reshape(n_heads, 6, 6).numpy(), atol=1e-4)
    for name in names:
        assert f">{name}</option>" in document


def test_attention_view_renders_inline_and_takes_head_names():
    view = viz.AttentionView(TOKENS, random_pattern(2).numpy(), head_names=["prev <token>", "induction"])
    fragment = view._repr_html_()
    parse(fragment)
    assert fragment.startswith('<div class="hv-root"') and "<html" not in fragment
    assert "prev &lt;token&gt;" in fragment and ">induction</option>" in fragment
    # Two views on one page do not share element ids.
    assert re.search(r'id="(hv[^"]+)"', fragment).group(1) != re.search(r'id="(hv[^"]+)"', view.fragment()).group(1)


def test_circuitsvis_call_gives_the_same_view():
    pattern = random_pattern(2)
    view = viz.attention_patterns(tokens=TOKENS, attention=pattern, attention_head_names=["a", "b"])
    assert isinstance(view, viz.AttentionView) and view.head_names == ["a", "b"]
    assert view._data() == viz.AttentionView(TOKENS, pattern, ["a", "b"])._data()


def test_attention_html_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[n_heads, query_pos, key_pos\]"):
        viz.attention_html(TOKENS, torch.rand(6, 6))
    with pytest.raises(ValueError, match="there are 6 tokens"):
        viz.attention_html(TOKENS, torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="head_names has 1 labels"):
        viz.attention_html(TOKENS, random_pattern(2), head_names=["only one"])
    with pytest.raises(ValueError, match="NaN"):
        viz.attention_html(TOKENS, torch.full((1, 6, 6), float("nan")))


def test_heatmaps_return_figures_and_write_pngs_when_asked(tmp_path):
    from matplotlib.figure import Figure

    grid = torch.randn(4, len(TOKENS))
    fig = viz.plot_layer_pos_grid(grid, TOKENS, tmp_path / "pos.png", title="patching", colorbar_label="recovered")
    assert isinstance(fig, Figure) and (tmp_path / "pos.png").read_bytes().startswith(PNG)
    assert fig.axes[0].get_xlabel() == "position" and len(fig.axes) == 2  # the grid and its colorbar
    viz.plot_layer_head_grid(torch.rand(4, 3), tmp_path / "heads.png", title="head scores")
    assert (tmp_path / "heads.png").read_bytes().startswith(PNG)
    top_tokens = [[f"t{l}{p}" for p in range(len(TOKENS))] for l in range(4)]
    viz.plot_logit_lens_table(torch.rand(4, len(TOKENS)), top_tokens, tmp_path / "lens.png", tokens=TOKENS)
    assert (tmp_path / "lens.png").read_bytes().startswith(PNG)
    viz.plot_heatmap(np.eye(3), str(tmp_path / "plain.png"), row_labels=["a", "b", "c"])
    assert (tmp_path / "plain.png").read_bytes().startswith(PNG)
    inline = viz.plot_layer_head_grid(torch.rand(2, 3))  # no path: a Figure to display, nothing written
    assert isinstance(inline, Figure) and [t.get_text() for t in inline.axes[0].get_yticklabels()] == ["0", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.png", "lens.png", "plain.png", "pos.png"]


def test_heatmaps_reject_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\[layers, positions\]"):
        viz.plot_layer_pos_grid(torch.rand(4), TOKENS, tmp_path / "x.png")
    with pytest.raises(ValueError, match="5 positions but 6 tokens"):
        viz.plot_layer_pos_grid(torch.rand(3, 5), TOKENS, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[layers, heads\]"):
        viz.plot_layer_head_grid(torch.rand(2, 3, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="row_labels has 2 labels"):
        viz.plot_heatmap(torch.rand(3, 3), tmp_path / "x.png", row_labels=["a", "b"])
    with pytest.raises(ValueError, match="cell_text must be 2 rows of 6 strings"):
        viz.plot_logit_lens_table(torch.rand(2, 6), [["a"] * 6], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_scatter_writes_png_and_checks_lengths(tmp_path):
    x = torch.randn(12)
    viz.plot_scatter(x, 0.9 * x, tmp_path / "scatter.png", labels=[f"L{i}H0" for i in range(12)], n_labelled=3)
    assert (tmp_path / "scatter.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="same non-zero number"):
        viz.plot_scatter(torch.randn(3), torch.randn(4), tmp_path / "x.png")


# ---- the viewer rendered by a real browser (headless chromium) -----------------------------------


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""
        self.classes = set((self.attrs.get("class") or "").split())

    def find_all(self, css_class):
        found = []
        for child in self.children:
            found += ([child] if css_class in child.classes else []) + child.find_all(css_class)
        return found

    def all_text(self):
        return self.text + "".join(child.all_text() for child in self.children)


class TreeBuilder(HTMLParser):
    """The rendered DOM as a tree of Elements (chromium's serialization is well formed)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Element("document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.node)
        self.node.children.append(element)
        if tag not in VOID:
            self.node = element

    def handle_endtag(self, tag):
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.text += data


# Stands in for a reader: hover token 2, then click the grid's fifth head (L1H1).
READER = """<script>
var root = document.querySelector(".hv-root");
root.querySelectorAll(".hv-src .hv-tok")[2].dispatchEvent(new MouseEvent("mouseenter"));
root.querySelectorAll(".hv-grid .hv-panel")[4].click();
</script></body>"""


def rendered_dom(tmp_path, document: str) -> Element:
    import os
    import shutil
    import subprocess

    browser = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    if browser is None:
        if os.environ.get("HOOKED_REQUIRE_CHROMIUM") == "1":
            pytest.fail("HOOKED_REQUIRE_CHROMIUM=1 but no chromium is installed (apt-get install -y chromium).")
        pytest.skip("chromium is not installed: the viewer is rendered only where it is (CI installs it)")
    path = tmp_path / "view.html"
    path.write_text(document, encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    run = subprocess.run(
        [browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0 and "<html" in run.stdout, run.stderr[-2000:]
    builder = TreeBuilder()
    builder.feed(run.stdout)
    return builder.root


def labels(panel: Element, axis: str) -> list[str]:
    (box,) = panel.find_all(axis)
    return [label.all_text() for label in box.find_all("hv-lab")]


def test_browser_renders_the_head_grid_and_token_axes(tmp_path):
    pattern = random_pattern(2, 3)
    dom = rendered_dom(tmp_path, viz.AttentionView(TOKENS, pattern).html())
    shown_tokens = ["<bos>", "<b>&", "\u2423cat", "\\n", '\u2423"sat"', "$x$"]  # leading spaces visible as ␣
    (grid,) = dom.find_all("hv-grid")
    panels = grid.find_all("hv-panel")
    names = [f"L{l}H{h}" for l in range(2) for h in range(3)]
    assert [panel.find_all("hv-label")[0].all_text() for panel in panels] == names
    for panel in panels:  # every small multiple has its tokens on both axes, and its pattern drawn
        assert labels(panel, "hv-keys") == shown_tokens and labels(panel, "hv-queries") == shown_tokens
        assert [child.tag for child in panel.find_all("hv-body")[0].children][-1] == "canvas"
    assert "hv-selected" in panels[0].classes and not any("hv-selected" in p.classes for p in panels[1:])
    (one,) = dom.find_all("hv-one")
    (large,) = one.find_all("hv-panel")
    assert large.find_all("hv-label")[0].all_text() == "L0H0"
    assert labels(large, "hv-keys") == shown_tokens and labels(large, "hv-queries") == shown_tokens


def test_browser_shows_the_weights_of_the_hovered_token_for_the_clicked_head(tmp_path):
    pattern = random_pattern(2, 3)
    document = viz.AttentionView(TOKENS, pattern).html().replace("</body>", READER)
    dom = rendered_dom(tmp_path, document)
    (status,) = dom.find_all("hv-status")
    assert status.all_text().startswith("L1H1: token 2")
    (one,) = dom.find_all("hv-one")
    assert one.find_all("hv-label")[0].all_text() == "L1H1"
    assert "hv-selected" in dom.find_all("hv-grid")[0].find_all("hv-panel")[4].classes

    def weights(row):
        (box,) = dom.find_all(row)
        return [float(cell.all_text()) for cell in box.find_all("hv-w")]

    # Query 2's weights over the keys, and what each query gives key 2, shown to two decimals.
    np.testing.assert_allclose(weights("hv-gives"), pattern[1, 1, 2].numpy(), atol=0.0051)
    np.testing.assert_allclose(weights("hv-recv"), pattern[1, 1, :, 2].numpy(), atol=0.0051)


def test_a_pattern_with_its_batch_axis_is_refused_not_mislabelled():
    """cache["pattern", 16] keeps a batch axis of 1; read as a one-layer stack its heads were labelled L0H*."""
    pattern = torch.rand(1, 3, len(TOKENS), len(TOKENS)).softmax(-1)
    with pytest.raises(ValueError, match=r"looks like a batch axis.*\[0\]"):
        viz.AttentionView(TOKENS, pattern)
    view = viz.AttentionView(TOKENS, pattern[0], layer=16)
    assert view.head_names == ["L16H0", "L16H1", "L16H2"]


def test_the_viewer_has_a_static_table_when_javascript_is_off():
    pattern = torch.eye(len(TOKENS))[None].repeat(2, 1, 1)  # each query attends to itself
    document = viz.AttentionView(TOKENS, pattern).html()
    static = document[document.index("<noscript>") : document.index("</noscript>")]
    for token in TOKENS:
        assert f"<th>{html.escape(token)}</th>" in static
    assert static.count(">1.00</td>") == len(TOKENS) and static.count(">0.00</td>") == len(TOKENS) * (len(TOKENS) - 1)


def test_logit_lens_table_text_contrasts_with_its_cell_and_shows_leading_spaces():
    probs = np.array([[1.0, 0.0], [0.05, 0.95]])  # the darkest and the lightest cells of the scale
    fig = viz.plot_logit_lens_table(probs, [[" Paris", "\n"], ["the", "  x"]], tokens=[" The", "$a$"])
    ax = fig.axes[0]
    cells = {text.get_text(): text.get_color() for text in ax.texts}
    assert cells == {"\u2423Paris": "white", "\\n": "black", "the": "black", "\u2423\u2423x": "white"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["\u2423The 0", r"\$a\$ 1"]


def test_interactive_heatmaps_are_plotly_figures_with_the_same_numbers(tmp_path):
    pytest.importorskip("plotly")
    values = torch.randn(3, 4)
    fig = viz.plot_layer_head_grid(values, tmp_path / "heads.html", title="scores", interactive=True)
    (heatmap,) = fig.data
    np.testing.assert_allclose(np.array(heatmap.z), values.numpy(), rtol=1e-6)
    assert heatmap.zmin == -heatmap.zmax == -float(values.abs().max())  # diverging, centred on 0
    assert list(fig.layout.yaxis.ticktext) == ["0", "1", "2"] and fig.layout.xaxis.title.text == "head"
    assert (tmp_path / "heads.html").read_text().lower().startswith("<!doctype html>")
    lens = viz.plot_logit_lens_table(torch.rand(2, 2), [[" a", "b"], ["c", " d"]], tokens=[" x", "y"], interactive=True)
    assert [list(row) for row in lens.data[0].text] == [["\u2423a", "b"], ["c", "\u2423d"]]
    assert list(lens.layout.xaxis.ticktext) == ["\u2423x 0", "y 1"]
    assert lens.data[0].customdata[1][0][2] == "c"  # hovering a cell shows its token


def test_interactive_without_plotly_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"hooked-transformer\[plotly\]"):
        viz.plot_heatmap(np.eye(2), interactive=True)

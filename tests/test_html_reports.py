"""The pages people look at, drawn by a real browser: `rewrite --report r.html` and `bench --html`.

Headless Chromium renders each page to a PNG (not blank, and the page ends inside the shot, so
every row is in the picture) and dumps its DOM (every layer has its row). Without a chromium
binary the browser tests skip; .ci/run installs Debian's `chromium`. The Markdown report and the
optional sections are checked without a browser.
"""
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from PIL import Image, ImageStat

from onnx_cp.cli import cli
from onnx_cp.report_html import render_html
from onnx_cp.report_markdown import render_markdown

MODELS = Path(__file__).resolve().parent.parent / "models"
CHARCNN = MODELS / "charcnn36.onnx"
CHARCNN_CP = MODELS / "charcnn36_cp.onnx"
# The shipped model's ranks, so the page shows rewritten, kept and ineligible layers alike.
CHARCNN_RANKS = ("--rank", "16", "--rank", "*features.3*=32", "--rank", "*features.6*=32")
WINDOW = (1200, 4000)  # tall enough that the whole page ends inside the shot
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def chromium():
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if binary is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    return binary


def browse(binary: str, page: Path, out: Path) -> tuple[Image.Image, str]:
    """``page`` drawn by headless Chromium: its screenshot and its DOM after loading. Each run gets a
    new, empty profile folder."""
    def run(tag: str, *args: str) -> subprocess.CompletedProcess:
        profile = out / f"profile-{tag}"
        profile.mkdir()
        done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    png = out / f"{page.stem}.png"
    run("shot", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={png}")
    dom = run("dom", "--dump-dom").stdout
    return Image.open(png).convert("L"), dom


class Rows(HTMLParser):
    """The first cell of every body row of every table, and the ``data-layer`` of every chart group."""

    def __init__(self, text: str):
        super().__init__()
        self.first_cells, self.chart_layers = [], set()
        self._cell, self._depth, self._in_body = None, 0, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr":
            self._depth = 0
        elif tag == "td" and self._in_body:
            self._depth += 1
            if self._depth == 1:
                self._cell = ""
        elif tag == "g" and "data-layer" in attrs:
            self.chart_layers.add(attrs["data-layer"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.first_cells.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def assert_drawn(image: Image.Image) -> None:
    """Something is drawn, and the page ends inside the shot (its last strip is empty)."""
    assert ImageStat.Stat(image).var[0] > 1.0, "the page rendered blank"
    bottom = image.crop((0, image.height - 40, image.width, image.height))
    assert ImageStat.Stat(bottom).var[0] == 0.0, f"the page runs past the {image.height}-pixel shot"


def conv_nodes(path: Path) -> list[str]:
    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node if node.op_type == "Conv"]


def test_the_rewrite_report_page_shows_every_layer_in_a_browser(tmp_path, chromium):
    page = tmp_path / "charcnn36_rewrite.html"
    invoke("rewrite", CHARCNN, *CHARCNN_RANKS, "--max-iter", "20", "-o", tmp_path / "c.onnx", "--report", page, "-q")
    text = page.read_text()
    assert not re.search(r"\b(src|href)=|url\(|@import", text), "the page must not fetch anything"
    image, dom = browse(chromium, page, tmp_path)
    assert_drawn(image)
    rows = Rows(dom)
    layers = conv_nodes(CHARCNN)
    assert len(layers) == 4
    assert set(layers) <= set(rows.first_cells)  # the layers table
    assert set(layers) == rows.chart_layers  # the per-layer time bars
    assert "Whole-model latency" in dom and "onnx-cp rewrite" in dom


def test_the_bench_page_shows_every_layer_in_a_browser(tmp_path, chromium):
    page, data = tmp_path / "charcnn36_bench.html", tmp_path / "bench.json"
    invoke("bench", CHARCNN, CHARCNN_CP, "--per-node", "--runs", "5", "--warmup", "1", "--html", page, "--json", data)
    compared, = json.loads(data.read_text())["comparisons"]
    layers = [row["layer"] for row in compared["layers"]]
    assert set(conv_nodes(CHARCNN)) <= set(layers)
    image, dom = browse(chromium, page, tmp_path)
    assert_drawn(image)
    rows = Rows(dom)
    assert set(layers) <= set(rows.first_cells)
    assert set(layers) == rows.chart_layers


@pytest.fixture(scope="module")
def mnist_report(tmp_path_factory):
    """The JSON report of a quick rewrite of the MNIST CNN (2 of its 3 Convs rewritten or kept by timing)."""
    folder = tmp_path_factory.mktemp("mnist")
    invoke("rewrite", MODELS / "mnist_cnn.onnx", "--rank", "8", "--max-iter", "10", "-o", folder / "m.onnx",
           "--report", folder / "m.json", "-q")
    return json.loads((folder / "m.json").read_text())


def test_report_suffix_picks_the_format(tmp_path):
    model = MODELS / "mnist_cnn.onnx"
    for name in ("r.md", "r.html", "r.json"):
        invoke("rewrite", model, "--rank", "8", "--max-iter", "5", "--realize", "cp4", "-o", tmp_path / f"{name}.onnx",
               "--report", tmp_path / name, "-q")
    assert (tmp_path / "r.md").read_text().startswith("# onnx-cp rewrite")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    data = json.loads((tmp_path / "r.json").read_text())
    markdown_rows = [line.split(" | ")[0].strip("|* ") for line in (tmp_path / "r.md").read_text().splitlines()]
    for layer in conv_nodes(model):
        assert layer in markdown_rows
        assert layer in Rows((tmp_path / "r.html").read_text()).first_cells
    # --realize cp4 times nothing: the page says so instead of drawing empty bars
    assert all(not layer.get("timings_ms") for layer in data["layers"])
    assert "No per-layer times" in (tmp_path / "r.html").read_text()


def test_optional_sections_render_when_present(mnist_report):
    data = {k: v for k, v in mnist_report.items() if k not in ("machine", "sensitivity", "quantization")}
    plain = render_html(data)
    layers = [layer["node"] for layer in data["layers"]]
    data["machine"] = {"label": "Example CPU (AVX-512)", "cores": 2}
    data["sensitivity"] = [{"layer": name, "decomposition": "cp", "rank": 8, "ms_saved": 0.01 * k,
                            "drop": 0.001 * k, "decision": "kept" if k else "reverted"} for k, name in enumerate(layers)]
    data["quantization"] = {"original_ms": 0.3, "int8_ms": 0.2, "lowrank_ms": 0.1, "lowrank_int8_ms": 0.08,
                            "layers": [{"layer": name, "form": "int8", "ms": 0.02} for name in layers]}
    page, markdown = render_html(data), render_markdown(data)
    for heading in ("Sensitivity: each layer alone", "Quantization: whole model", "Quantization: layers", "Machine"):
        assert heading in page and heading not in plain
        assert f"## {heading}" in markdown
    assert "measured on Example CPU (AVX-512)" in page
    cells = Rows(page).first_cells
    for name in layers:
        assert cells.count(name) >= 3  # the layers, sensitivity and quantization tables
    assert "reverted" in page and "reverted" in markdown
    for label in ("INT8 alone", "low-rank + INT8"):
        assert label in Rows(page).first_cells and f'data-model="{label}"' in page

"""Output for people and pipes: tables within the terminal's width (COLUMNS when piped), layer
names never broken mid-word, rich markup in names and notes printed as it is, and errors on the
first line of stderr."""
import io
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper
from rich.console import Console

from onnx_cp.cli import cli
from onnx_cp.commands.options import PIPE_WIDTH, make_console
from onnx_cp.report import LayerReport, RewriteReport, render_rewrite
from onnx_cp.table import Table, draw, fold_name

LONG = "/model.22/cv3.0/cv3.0.0/conv/Conv"
MARKUP = "conv[bold]x[/bold]"


def chain_model(layers) -> onnx.ModelProto:
    """x (1x8x12x12) -> Conv -> Relu -> Conv -> Relu ... : one 8 -> 8 Conv per (name, kernel size)."""
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for k, (name, size) in enumerate(layers):
        weight = rng.standard_normal((8, 8, size, size)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{k}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{k}"], [f"c{k}"], name=name,
                                      kernel_shape=[size, size], pads=[size // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"))
        previous = f"r{k}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             [1, 8, 12, 12])],
                              [helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, [1, 8, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("output") / "m.onnx"
    onnx.save(chain_model([("/0/Conv", 3), (LONG, 3), (MARKUP, 1)]), path)
    return path


def rewrite_output(model_path, tmp_path, columns: str) -> str:
    result = CliRunner().invoke(cli, ["rewrite", str(model_path), "--rank", "4", "--realize", "cp4", "-o",
                                      str(tmp_path / "o.onnx")], env={"COLUMNS": columns},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("columns", ["80", "60", "40"])
def test_rewrite_output_fits_COLUMNS_when_piped_and_keeps_names_whole(model_path, tmp_path, columns):
    out = rewrite_output(model_path, tmp_path, columns)
    assert max(len(line) for line in out.splitlines()) <= int(columns), out
    assert "wrote " in out
    assert "/0/Conv" in out and MARKUP in out
    # the long name is whole or folded before a '/', never inside a part of it
    for part in LONG.split("/")[1:]:
        assert f"/{part}" in out, out


@pytest.mark.parametrize("columns", ["80", "40"])
def test_inspect_output_fits_COLUMNS_when_piped_and_prints_names_verbatim(model_path, columns):
    result = CliRunner().invoke(cli, ["inspect", str(model_path)], env={"COLUMNS": columns},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= int(columns), result.output
    for name in ("/0/Conv", MARKUP, *(f"/{part}" for part in LONG.split("/")[1:])):
        assert name in result.output, result.output


def test_rewrite_table_at_80_columns_is_a_table_with_the_essentials(model_path, tmp_path):
    out = rewrite_output(model_path, tmp_path, "80")
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    for column in ("form", "rank", "kernel err", "MACs after", "note"):
        assert column in header
    assert "params after" not in header  # left out to fit


def test_piped_output_without_COLUMNS_is_wide_but_bounded(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == PIPE_WIDTH  # pytest captures stdout: not a terminal
    monkeypatch.setenv("COLUMNS", "93")
    assert make_console().width == 93


def render(report: RewriteReport, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    render_rewrite(report, console)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [200, 80, 40])
def test_markup_in_layer_names_reasons_and_notes_prints_verbatim(width):
    notes = ["[bold]x[/bold]", "('height' in ['[dim]'])"]
    report = RewriteReport([LayerReport(node="[red]n[/red]", op_type="Conv", weight="w", status="ineligible",
                                        reason="weight [w] is computed at run time", kernel=[3, 3])],
                           method="nls", notes=notes)
    out = render(report, width)
    flat = " ".join(out.split())  # notes may wrap between words at narrow widths
    for text in notes + ["[red]n[/red]", "weight [w] is computed"]:
        assert text in flat, out


def test_names_fold_before_a_slash_and_a_part_too_long_stays_whole():
    assert fold_name(LONG, 20) == "/model.22/cv3.0\n/cv3.0.0/conv/Conv"
    assert fold_name(LONG, 100) == LONG
    assert fold_name("conv2_w_0", 4) == "conv2_w_0"


def test_long_names_fold_at_slashes_within_the_width():
    table = Table("t", ["layer", "a", "b", "note"], [False, True, True, False],
                  [[LONG, "1.00M", "2.00M", "a note of several words"], ["/0/Conv", "1", "2", ""]])
    console = Console(file=io.StringIO(), width=44, color_system=None)
    draw(table, console)
    out = console.file.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 44, out
    assert "/model.22/cv3.0" in out and "/cv3.0.0/conv/Conv" in out, out


def test_error_is_the_first_line_of_stderr(model_path, tmp_path):
    # fails inside the fitting loop, after the progress display has started
    result = subprocess.run([sys.executable, "-m", "onnx_cp.cli", "rewrite", str(model_path), "--rank", "4",
                             "--layers", "nothing*", "-o", str(tmp_path / "o.onnx")],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("onnx-cp: error: "), result.stderr
    assert not result.stdout


@pytest.mark.parametrize("original, rewritten, spread, busy", [
    (271.688, 81.888, 0.07, False),
    (271.688, 81.888, 0.24, True),
    (0.234, 0.047, 0.25, False),  # a 0.05 ms model's runs spread that wide on a quiet machine
])
def test_the_closing_line_says_how_sure_its_speed_up_is(original, rewritten, spread, busy):
    from types import SimpleNamespace

    from onnx_cp.commands.rewrite_cmd import _speed_summary
    from onnx_cp.measure import SpeedCheck

    speed = SpeedCheck(original, rewritten, spread).to_dict()
    line = _speed_summary(SimpleNamespace(speed=speed), threads=1, batch=1)
    assert line.startswith(f": {original / rewritten:.2f}x the input's speed in onnxruntime ({original:.3f} -> "
                           f"{rewritten:.3f} ms, 1 thread, batch 1")
    assert f"runs spread {spread:.0%}" in line
    assert ("busy machine" in line) is busy and ("onnx-cp bench" in line) is busy

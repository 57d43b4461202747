"""Messages speak to whoever passed the value: the Python API names parameters
(``input_shapes={'x': (1, 4, 224, 224)}``), the command line the same cases as flags
(``--input-shape x=1x4x224x224``), from one message (``onnx_cp.errors.param``)."""
import ast
import json
import pickle
import re
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnx_cp
from onnx_cp.cli import cli
from onnx_cp.errors import Message, OnnxCpError, cli_text, flag, marked, param, shape_param, spelled

PACKAGE = Path(onnx_cp.__file__).parent
FAST = ("--method", "als", "--max-iter", "5", "--realize", "cp4")


def tiny_conv(dynamic: bool = False) -> onnx.ModelProto:
    """x (1 x 4 x 8 x 8, or 1 x 4 x H x W) -> Conv 3x3, 6 outputs, pads 1 -> y."""
    dims = [1, 4, "H", "W"] if dynamic else [1, 4, 8, 8]
    weight = np.random.default_rng(0).standard_normal((6, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", pads=[1, 1, 1, 1])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, *dims[2:]])],
        [onnx.numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def saved(tmp_path):
    def save(model: onnx.ModelProto) -> Path:
        path = tmp_path / "m.onnx"
        onnx.save(model, path)
        return path
    return save


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    line, = result.output.strip().splitlines()
    assert line.startswith("onnx-cp: error: ")
    return line


# --- errors: the API's names, the CLI's flags ----------------------------------------------------

def test_a_dynamic_input_without_input_shapes(saved, tmp_path):
    with pytest.raises(OnnxCpError) as info:
        onnx_cp.rewrite(tiny_conv(dynamic=True), onnx_cp.RewriteConfig(ranks=(2,)))
    message = str(info.value)
    assert "give it with input_shapes={'x': (1, 4, 224, 224)} (your size)" in message
    assert "force a form with realize='cp4'" in message and "--" not in message and info.value.usage

    result = invoke("rewrite", saved(tiny_conv(dynamic=True)), "--rank", "2", "-o", tmp_path / "o.onnx")
    line = error_line(result)
    assert result.exit_code == 2 and not (tmp_path / "o.onnx").exists()
    assert "give it with --input-shape x=1x4x224x224 (your size)" in line and "force a form with --realize cp4" in line
    assert "input_shapes" not in line


def test_an_exclude_pattern_matching_nothing(saved, tmp_path):
    with pytest.raises(OnnxCpError) as info:
        onnx_cp.rewrite(tiny_conv(), onnx_cp.RewriteConfig(ranks=(2,), exclude=("conv9*",), realize="cp4"))
    assert str(info.value).startswith("exclude pattern 'conv9*' matches no convolution")
    assert str(info.value).endswith("some names: conv1; onnx_cp.inspect_model lists them")

    result = invoke("rewrite", saved(tiny_conv()), "--rank", "2", "--exclude", "conv9*", "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2
    assert error_line(result) == ("onnx-cp: error: --exclude 'conv9*' matches no convolution (node or weight "
                                  "name); some names: conv1; run 'onnx-cp inspect' to list them")


@pytest.mark.parametrize("settings, flags, api, cli_message", [
    ({"ranks": (2,), "max_time": -1.0}, ["--rank", "2", "--max-time", "-1"],
     "max_time must be positive, got -1.0", "--max-time must be positive, got -1.0"),
    ({}, [], "no rank given; pass ranks (e.g. ranks=(64,) or ranks=(0.25,)), selection.max_error, "
              "selection.target_speedup or selection.budget_macs",
     "no rank given; pass --rank (e.g. --rank 64 or --rank 0.25), --max-error, --target-speedup or --budget-macs"),
    ({"ranks": ("abc",)}, ["--rank", "abc"],
     "ranks entry 'abc': 'abc' is not a number", "--rank 'abc': 'abc' is not a number"),
    ({"ranks": (8,), "decomposition": "lrcp"}, ["--rank", "8", "--decomposition", "lrcp"],
     "decomposition='lrcp' needs its factor rank: give factor_rank=L (e.g. ranks=(24,), factor_rank=8)",
     "--decomposition lrcp needs its factor rank: give --factor-rank L (e.g. --rank 24 --factor-rank 8)"),
])
def test_a_bad_setting(saved, tmp_path, settings, flags, api, cli_message):
    with pytest.raises(OnnxCpError) as info:
        onnx_cp.RewriteConfig(**settings)
    assert str(info.value).startswith(api) and info.value.usage

    result = invoke("rewrite", saved(tiny_conv()), *flags, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and error_line(result).startswith(f"onnx-cp: error: {cli_message}")


def test_a_rank_selection_names_its_mode():
    with pytest.raises(OnnxCpError) as info:
        onnx_cp.RewriteConfig(ranks=(8,), selection=onnx_cp.RankSelection(target_speedup=2.0))
    assert str(info.value).startswith("ranks=8 sets every layer's rank, and selection.target_speedup=2.0 chooses")
    assert info.value.cli.startswith("--rank 8 sets every layer's rank, and --target-speedup 2.0 chooses")


# --- notes: the report names parameters, what the CLI prints and writes names flags --------------

def test_notes_name_parameters_in_the_report_and_flags_on_the_command_line(saved, tmp_path):
    config = onnx_cp.RewriteConfig(ranks=(2, "nothing*=4"), method="als", max_iter=5, realize="cp4")
    notes = onnx_cp.rewrite_with_report(tiny_conv(dynamic=True), config).report.notes
    assert any(n.startswith("ranks entry 'nothing*=4' matches no selected convolution; onnx_cp.inspect_model")
               for n in notes)
    assert any("(set them with input_shapes={'x': (1, 4, 1, 1)})" in n for n in notes)
    assert not any("--" in n for n in notes)
    assert json.loads(onnx_cp.rewrite_with_report(tiny_conv(dynamic=True), config).report.to_json())["notes"] == notes

    report = tmp_path / "r.json"
    result = invoke("rewrite", saved(tiny_conv(dynamic=True)), "--rank", "2", "--rank", "nothing*=4", *FAST,
                    "-o", tmp_path / "o.onnx", "--report", report)
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "note: --rank 'nothing*=4' matches no selected convolution; run 'onnx-cp inspect'" in printed
    assert "(set them with --input-shape x=1x4x1x1)" in printed
    written = json.loads(report.read_text())["notes"]
    assert any(n.startswith("--rank 'nothing*=4'") for n in written)
    assert not any("input_shapes" in n or "ranks entry" in n for n in written)

    inspected = invoke("inspect", saved(tiny_conv(dynamic=True)), "--json")
    assert any("--input-shape x=1x4x1x1" in n for n in json.loads(inspected.output)["notes"])


# --- the mechanism ----------------------------------------------------------------------------------

def test_one_message_reads_two_ways_and_survives_pickling_and_quoting():
    exc = OnnxCpError(f"{param('max_time')} and {shape_param('images', (1, 3, 320, 320))}", usage=True)
    assert str(exc) == "max_time and input_shapes={'images': (1, 3, 320, 320)}"
    assert exc.cli == cli_text(exc) == "--max-time and --input-shape images=1x3x320x320"
    again = pickle.loads(pickle.dumps(exc))
    assert (str(again), again.cli, again.usage) == (str(exc), exc.cli, True)
    quoted = Message(f"worker 1: {marked(exc)}")
    assert quoted == f"worker 1: {exc}" and quoted.cli == f"worker 1: {exc.cli}"
    assert json.dumps([quoted]) == json.dumps([str(quoted)])
    assert Message("plain").cli == "plain" and spelled("same", "same") == "same"
    assert param("calib", "'a.npz'", cli="a.npz") != param("calib")
    assert Message(param("selection.storage", "'sqlite:///s.db'", cli="sqlite:///s.db")).cli == \
        "--search-storage sqlite:///s.db"


def _named_parameters() -> set[str]:
    """Every parameter a library message names by a literal: param("name", ...)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "param" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_every_parameter_a_message_names_has_its_flag_on_the_command_line():
    flags = {opt for command in cli.commands.values() for p in command.params if isinstance(p, click.Option)
             for opt in p.opts}
    names = _named_parameters() | {"threads", "warmup", "runs", "batch", "mean", "std"}  # named by variables
    api_only = {"selection.candidates"}  # no flag: RankSelection(candidates=...) alone
    assert len(names) > 30
    missing = {name: flag(name) for name in names - api_only if flag(name) not in flags}
    assert not missing, f"parameters whose flag no command has: {missing}"
    assert re.fullmatch(r"--[a-z-]+", flag("input_shapes")) and flag("selection.target_speedup") == "--target-speedup"

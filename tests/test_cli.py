"""The command line: tables, JSON, one-line errors with exit codes, and files left intact."""
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from builders import conv_model, grouped_cp_kernel, relative_difference, run
from onnx_cp.cli import cli


@pytest.fixture
def model_path(tmp_path):
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 16, 8, 3, 3, 1, 3)
    bias = rng.standard_normal(16).astype(np.float32)
    path = tmp_path / "model.onnx"
    onnx.save(conv_model((1, 8, 12, 12), weight.astype(np.float32), bias, pads=[1, 1, 1, 1]), path)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_inspect_json_lists_every_conv_with_cost_and_eligibility(model_path):
    result = invoke("inspect", model_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    layer, = data["layers"]
    assert layer["node"] == "conv" and layer["status"] == "eligible"
    assert layer["weight_shape"] == [16, 8, 3, 3]
    assert layer["macs_before"] == 16 * 8 * 9 * 12 * 12
    assert layer["params_before"] == 16 * 8 * 9 + 16


def test_inspect_table_names_the_layer(model_path):
    result = invoke("inspect", model_path)
    assert result.exit_code == 0 and "conv" in result.output and "eligible" in result.output


def test_rewrite_writes_a_valid_model_and_a_report(model_path, tmp_path):
    out, report = tmp_path / "fast.onnx", tmp_path / "report.json"
    before = model_path.read_bytes()
    result = invoke("rewrite", model_path, "--rank", "3", "--realize", "cp4", "-o", out,
                    "--report", report)
    assert result.exit_code == 0, result.output
    assert model_path.read_bytes() == before
    fast = onnx.load(out)
    onnx.checker.check_model(fast, full_check=True)
    layer, = json.loads(report.read_text())["layers"]
    assert layer["status"] == "rewritten" and layer["rank"] == 3
    assert layer["rel_error"] < 1e-6  # the kernel is exactly rank 3
    x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)
    assert relative_difference(run(onnx.load(model_path), {"x": x})[0], run(fast, {"x": x})[0]) < 1e-4
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("args, message", [
    (["--rank", "0"], "at least 1"),
    (["--rank", "-3"], "at least 1"),
    (["--rank", "abc"], "not a number"),
    (["--rank", "1.5"], "(0, 1)"),
    (["--rank", "4", "--layers", "nothing*"], "matches no convolution"),
    (["--rank", "nothing*=4"], "matches no convolution"),
    (["--rank", "4", "--input-shape", "x=1x8"], "dims"),
    (["--rank", "4", "--input-shape", "bogus"], "NAME=DIMS"),
])
def test_bad_arguments_give_one_line_and_exit_2(model_path, tmp_path, args, message):
    out = tmp_path / "fast.onnx"
    result = invoke("rewrite", model_path, "-o", out, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-cp: error:") and message in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "directory"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(os.urandom(256)), "ONNX"),
])
def test_bad_model_files_give_one_line(tmp_path, make, message):
    path = tmp_path / "bad.onnx"
    make(path)
    result = invoke("rewrite", path, "--rank", "4", "-o", tmp_path / "out.onnx")
    assert result.exit_code in (1, 2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_output_equal_to_input_needs_overwrite(model_path):
    before = model_path.read_bytes()
    result = invoke("rewrite", model_path, "--rank", "3", "-o", model_path)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert model_path.read_bytes() == before
    result = invoke("rewrite", model_path, "--rank", "3", "-o", model_path, "--overwrite")
    assert result.exit_code == 0
    onnx.checker.check_model(onnx.load(model_path), full_check=True)


def test_missing_output_folder_is_refused_before_fitting(model_path, tmp_path):
    result = invoke("rewrite", model_path, "--rank", "3", "-o", tmp_path / "no" / "such" / "out.onnx")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_failed_rewrite_leaves_existing_output_as_it_was(model_path, tmp_path):
    out = tmp_path / "fast.onnx"
    out.write_bytes(b"previous")
    result = invoke("rewrite", model_path, "--rank", "3", "--layers", "nope", "-o", out)
    assert result.exit_code == 2
    assert out.read_bytes() == b"previous"

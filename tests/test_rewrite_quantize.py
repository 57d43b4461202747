"""rewrite --quantize int8: the low-rank model in static INT8 where that pays, the four whole-model
figures in one run, INT8 alone without a rank, and what is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from golden_timing import _macs, _shapes
from onnx_cp import OnnxCpError, RankSelection, RewriteConfig, rewrite_with_report
from onnx_cp.cli import cli
from onnx_cp.quantize import quantize_int8
from onnx_cp.runtime import OPT_LEVELS, open_session, session_options

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("q") / "calib.npy"
    np.save(path, np.load(MODELS / "mnist_test.npz")["x"][:40])
    return str(path)


class Int8Pays:
    """Computed timing: a Conv, Gemm or MatMul costs its multiply-adds, ``int8`` times them (a
    third by default) when it runs in int8 (both its operands dequantized), and a model's time is
    its nodes' sum."""

    def __init__(self, int8: float = 1 / 3):
        self.int8 = int8

    def layers(self, models):
        return [self._per_node(m) for m in models]

    def whole(self, models):
        return [sum(self._per_node(m).values()) for m in models]

    def _per_node(self, model):
        shapes = _shapes(model, {"input": (1, 1, 28, 28)})
        sizes = {t.name: tuple(t.dims) for t in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        times = {}
        for node in model.graph.node:
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                weight = producers.get(node.input[1])  # a quantized weight comes through its DequantizeLinear
                known = dict(sizes, **({node.input[1]: sizes[weight.input[0]]} if weight is not None else {}))
                int8 = all(t in dequantized for t in node.input[:2])
                times[node.output[0]] = 1e-6 * _macs(node, shapes, known) * (self.int8 if int8 else 1.0) + 1e-3
        return times


def test_quantize_writes_the_low_rank_model_in_int8_with_the_four_figures(calib):
    config = RewriteConfig(ranks=(8,), quantize="int8", calib=calib, max_iter=20, stabilize="never", recover=False)
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays())
    onnx.checker.check_model(result.model, full_check=True)
    ops = {n.op_type for n in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = result.report.quantization
    assert q["quantized"] and q["lowrank_int8_ms"] < q["lowrank_ms"] < q["original_ms"]
    assert q["int8_ms"] < q["original_ms"] and set(q["speedups"]) == {"int8", "lowrank", "lowrank_int8"}
    assert {layer["form"] for layer in q["layers"]} == {"int8"} and all(layer["ms"] for layer in q["layers"])
    # the rewritten layers' stages are named after the layer they replaced
    assert any(layer["site"] != layer["layer"] for layer in q["layers"])
    assert 0 < q["lowrank_int8_error"] < 1 and 0 < q["int8_error"] < q["lowrank_int8_error"]
    x = np.load(MODELS / "mnist_test.npz")["x"][:4]
    for level in OPT_LEVELS:
        sess = open_session(result.model, session_options(threads=1, opt_level=level, quiet=True))
        assert sess.run(None, {"input": x})[0].shape == (4, 10)


def test_quantize_alone_is_int8_of_the_input(calib):
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), RewriteConfig(quantize="int8", calib=calib),
                                 timer=Int8Pays())
    assert not result.report.rewritten and result.report.quantization["quantized"]
    q = result.report.quantization
    assert q["lowrank_ms"] == pytest.approx(q["original_ms"])  # nothing low-rank: the input itself
    onnx.checker.check_model(result.model, full_check=True)
    # the model written is INT8, not the input: its speed is measured for the closing line
    assert result.report.speed["speedup"] == pytest.approx(q["original_ms"] / q["lowrank_int8_ms"], rel=1e-6)


def test_a_quantized_input_is_refused_in_one_line(tmp_path, calib):
    int8 = quantize_int8(onnx.load(MODELS / "mnist_cnn.onnx"), np.load(calib))
    onnx.save(int8, tmp_path / "int8.onnx")
    result = CliRunner().invoke(cli, ["rewrite", str(tmp_path / "int8.onnx"), "--quantize", "int8", "--calib", calib,
                                      "--rank", "8", "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and "quantized already" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_quantize_needs_calibration_data():
    with pytest.raises(OnnxCpError, match="calibrated on real inputs") as info:
        RewriteConfig(ranks=(8,), quantize="int8")
    assert "--calib" in info.value.cli and "--quantize int8" in info.value.cli
    with pytest.raises(OnnxCpError, match="choose int8"):
        RewriteConfig(ranks=(8,), quantize="int4", calib="x.npy")


def test_the_cli_writes_the_quantization_in_the_report(tmp_path, calib):
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = CliRunner().invoke(cli, ["rewrite", str(MODELS / "mnist_cnn.onnx"), "--rank", "8", "--quantize", "int8",
                                      "--calib", calib, "--max-iter", "20", "--no-recover", "-o", str(out),
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert set(data["quantization"]) >= {"original_ms", "int8_ms", "lowrank_ms", "lowrank_int8_ms", "layers"}
    assert "int8: input" in result.output and data["machine"]["label"] in result.output


def test_a_target_with_quantize_counts_the_quantized_model(calib):
    selection = RankSelection(target_speedup=4.0, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, quantize="int8", calib=calib, max_iter=10, stabilize="never",
                           recover=False, realize="cp4")
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays())
    summary = result.report.rank_selection
    assert summary["end_gain"] == pytest.approx(3.0, rel=0.05)  # every node a third as long in int8
    # the float plan asked for about 4 / 3, and the measured rounds timed quantized variants
    assert summary["rounds"] and summary["measured"]["measured_speedup"] > summary["predicted_speedup"]


def test_rounds_time_the_float_rewrite_where_int8_is_slower_on_it(calib):
    selection = RankSelection(target_speedup=2.0, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, quantize="int8", calib=calib, max_iter=10, stabilize="never",
                           recover=False, realize="cp4")
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays(int8=2.0))
    summary = result.report.rank_selection
    end = summary["end_form"]
    assert end["timed"] == "float" and end["int8_ms"] > end["float_ms"]
    # the rounds timed the float variants: what the quantize stage writes when int8 does not pay
    assert summary["measured"]["measured_speedup"] >= 2.0 * (1 - 0.03)
    assert not result.report.quantization["quantized"]
    assert any("ran slower in INT8" in str(note) for note in result.report.notes)


def test_the_latency_probe_times_the_layers_in_int8(calib):
    selection = RankSelection(target_speedup=4.0, candidates=3, calib_count=4, cost="latency")
    config = RewriteConfig(selection=selection, quantize="int8", calib=calib, max_iter=10, stabilize="never",
                           recover=False, realize="cp4")
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays())
    summary = result.report.rank_selection
    # the model the costs add up to is the input in INT8, a kept Conv at its int8 time
    model = onnx.load(MODELS / "mnist_cnn.onnx")
    as_int8, as_float = Int8Pays().whole([quantize_int8(model, np.load(calib)[:4]), model])
    assert summary["cost"] == "latency" and as_int8 < 0.5 * as_float
    assert summary["total_before"] == pytest.approx(as_int8, rel=1e-6)


def test_the_forms_are_timed_in_int8(calib):
    """Each layer's form is chosen by its time in INT8, the form it will be written in."""
    config = RewriteConfig(ranks=(8,), quantize="int8", calib=calib, max_iter=10, stabilize="never", recover=False)
    result = rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays())
    model = onnx.load(MODELS / "mnist_cnn.onnx")
    as_float = Int8Pays()._per_node(model)
    output = {n.name: n.output[0] for n in model.graph.node}
    rows = [r for r in result.report.to_dict()["layers"] if r["timings_ms"]]
    assert rows
    for row in rows:
        in_float = as_float[output[row["node"]]]
        assert row["timings_ms"]["original"] == pytest.approx((in_float - 1e-3) / 3 + 1e-3)  # the Conv in int8

"""With quantize='int8', a budget selection's damages are those of the INT8 form: each candidate's
and the kept Conv's error at the layer's output, measured with the layer alone quantized."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report
from onnx_cp.ranks import int8_damages, proxy
from onnx_cp.ranks.int8_damages import layer_alone
from test_rewrite_quantize import Int8Pays

MODELS = Path(__file__).resolve().parent.parent / "models"


def _two_convs(weight_from_input: bool = False) -> onnx.ModelProto:
    """x -> Conv(w1) -> Relu -> Conv(Identity(w2)) -> y; with ``weight_from_input`` the second
    Conv's weight is a graph input instead."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Identity", ["w2"], ["w2_read"], name="read"),
             helper.make_node("Conv", ["r", "w2_read", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])]
    if weight_from_input:
        inputs.append(helper.make_tensor_value_info("w2", onnx.TensorProto.FLOAT, [4, 8, 3, 3]))
    graph = helper.make_graph(nodes, "two", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [w1, b2] if weight_from_input else [w1, w2, b2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_layer_alone_computes_the_layer_as_in_the_model_weight_behind_identity_included():
    model = _two_convs()
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 3, 8, 8)).astype(np.float32)} for k in range(3)]
    got = proxy.capture(model, ["r", "y"], feeds)
    alone = layer_alone(model, model.graph.node[3], (1, 8, 8, 8), (1, 4, 8, 8))
    onnx.checker.check_model(alone, full_check=True)
    assert [n.op_type for n in alone.graph.node] == ["Identity", "Conv"]
    out = np.concatenate([r[0] for r in proxy.run(alone, [{"r": got["r"][k:k + 1]} for k in range(3)])])
    np.testing.assert_allclose(out, got["y"], rtol=1e-5, atol=1e-5)


def test_a_layer_whose_weight_is_a_graph_input_has_no_model_alone():
    model = _two_convs(weight_from_input=True)
    assert layer_alone(model, model.graph.node[3], (1, 8, 8, 8), (1, 4, 8, 8)) is None


def test_a_target_with_quantize_counts_each_options_int8_error(monkeypatch, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.load(MODELS / "mnist_test.npz")["x"][:40])
    seen = {}
    float_damages = int8_damages.measure_int8_damages

    def recorded(problem, progress):
        seen["float"] = [list(l.errors) for l in problem.auto]
        float_damages(problem, progress)
        seen["layers"] = problem.auto

    monkeypatch.setattr("onnx_cp.ranks.budget.measure_int8_damages", recorded)
    selection = RankSelection(target_speedup=4.0, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, quantize="int8", calib=str(calib), max_iter=10, stabilize="never",
                           recover=False, realize="cp4")
    rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), config, timer=Int8Pays())
    layers = seen["layers"]
    assert layers
    for layer, float_errors in zip(layers, seen["float"]):
        # the Conv kept in int8 is close to float, but not exact, and the knapsack counts it
        assert 0.0 < layer.keep_error < 0.05
        assert layer.options()[1][-1] == pytest.approx(layer.weight * layer.keep_error ** 2)
        # int8 never makes a low-rank candidate much closer to the float layer than it was
        assert all(q >= 0.9 * f for q, f in zip(layer.errors, float_errors))
        assert layer.errors != float_errors


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_a_linear_layer_gets_its_int8_damages(monkeypatch, tmp_path, op):
    """A Gemm's or MatMul's layer alone takes its own 2-D input (not the 1x1 Conv it is costed as)."""
    from test_auto_budget import faster_everywhere, linear_model

    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((16, 4, 8, 8)).astype(np.float32))
    seen = {}
    measure = int8_damages.measure_int8_damages

    def recorded(problem, progress):
        measure(problem, progress)
        seen["layers"] = problem.auto

    monkeypatch.setattr("onnx_cp.ranks.budget.measure_int8_damages", recorded)
    selection = RankSelection(target_speedup=2.0, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, decomposition="auto", quantize="int8", calib=str(calib), max_iter=10,
                           stabilize="never", recover=False)
    result = rewrite_with_report(linear_model(op), config, timer=faster_everywhere)
    onnx.checker.check_model(result.model, full_check=True)
    fc = next(l for l in seen["layers"] if l.site.name == "fc")
    assert 0.0 < fc.keep_error < 0.05 and len(fc.errors) == len(fc.ranks)

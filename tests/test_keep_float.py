"""A Conv or Gemm left float in a static INT8 model stays float in onnxruntime at every optimization
level (onnx_cp.quantize.keep_float): not rewritten to per-tensor int8 by onnxruntime's
WeightBiasQuantization, its outputs those of the same model with optimizations off."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_cp.quantize import FLOAT, quantize_fastest, quantize_int8
from onnx_cp.quantize.keep_float import keep_float
from onnx_cp.runtime import OPT_LEVELS, open_session, session_options

from test_quantize import CHAIN, FakeTiming, inputs, outputs, relative, tiny_model

MODELS = Path(__file__).resolve().parent.parent / "models"


def optimized(model: onnx.ModelProto, level: str, tmp_path) -> onnx.ModelProto:
    """``model`` as onnxruntime rewrites it at ``level``."""
    options = session_options(threads=1, opt_level=level)
    options.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
    open_session(model, options)
    return onnx.load(options.optimized_model_filepath)


def float_weight(model: onnx.ModelProto, name: str) -> bool:
    """Whether node ``name`` is still a float op whose weight is a float initializer, not dequantized."""
    node = next((n for n in model.graph.node if n.name == name), None)
    inits = {i.name: i for i in model.graph.initializer}
    return (node is not None and not node.op_type.startswith("QLinear") and node.input[1] in inits
            and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_excluded_nodes_run_float_in_onnxruntime(level, tmp_path):
    """conv2 (between int8 neighbours) and the chain's middle stage, left float; without
    keep_float onnxruntime quantizes both weights per tensor at these levels."""
    left = ["conv2", CHAIN[1]]
    int8 = quantize_int8(tiny_model(), inputs(16), nodes_to_exclude=left)
    onnx.checker.check_model(int8, full_check=True)
    seen = optimized(int8, level, tmp_path)
    assert all(float_weight(seen, name) for name in left), [(n.op_type, n.name) for n in seen.graph.node]
    assert not float_weight(seen, "conv1") and not float_weight(seen, CHAIN[2])  # the int8 ones stay int8


def test_without_it_onnxruntime_quantizes_them(tmp_path):
    """The control: the same model with the per-channel DequantizeLinears put back to the shared one."""
    int8 = quantize_int8(tiny_model(), inputs(16), nodes_to_exclude=["conv2"])
    node = next(n for n in int8.graph.node if n.name == "conv2")
    dq = next(n for n in int8.graph.node if n.output[0] == node.input[0])
    shared = next(n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == dq.input[0])
    plain = helper.make_node("DequantizeLinear", [shared.output[0], *shared.input[1:3]], ["r1_plain"])
    node.input[0] = "r1_plain"
    nodes = list(int8.graph.node)
    int8.graph.ClearField("node")
    int8.graph.node.extend([plain, *nodes])
    assert not float_weight(optimized(int8, "basic", tmp_path), "conv2")


def test_outputs_at_every_level_are_those_with_optimizations_off():
    x = inputs(24)
    int8 = quantize_int8(tiny_model(), x[:16], nodes_to_exclude=["conv2", "fc"])
    reference = outputs(int8, x[16:], "disable")
    for level in OPT_LEVELS:
        assert relative(outputs(int8, x[16:], level), reference) < 1e-3, level


def one_channel_model() -> onnx.ModelProto:
    """x (4 channels) -> conv1 (to 1 channel) -> Relu -> conv2 (1 to 4 channels) -> Relu -> conv3 -> y."""
    rng = np.random.default_rng(5)
    shapes = {"w1": (1, 4, 3, 3), "w2": (4, 1, 3, 3), "w3": (2, 4, 3, 3)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in shapes.items()]
    nodes = []
    for k, (src, w) in enumerate((("x", "w1"), ("r1", "w2"), ("r2", "w3")), 1):
        nodes += [helper.make_node("Conv", [src, w], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("r3", onnx.TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_data_input_of_one_channel_is_named_as_not_kept_float():
    x = np.random.default_rng(6).standard_normal((8, 1, 4, 8, 8)).astype(np.float32)
    int8 = quantize_int8(one_channel_model(), [{"x": v} for v in x], nodes_to_exclude=["conv2"])
    assert keep_float(int8) == ["conv2"]  # quantize_int8 has done the rest already; this one it cannot
    onnx.checker.check_model(int8, full_check=True)


def test_its_reported_form_says_onnxruntime_quantizes_it_per_tensor():
    x = np.random.default_rng(6).standard_normal((8, 1, 4, 8, 8)).astype(np.float32)
    fake = FakeTiming({"conv1": 1.0, "conv2": 1.0, "conv3": 1.0}, {"conv1": 0.3, "conv2": 1.5, "conv3": 0.3})
    result = quantize_fastest(one_channel_model(), [{"x": v} for v in x], fake.timing())
    conv2 = next(n for n in result.nodes if n.node == "conv2")
    assert result.quantized and conv2.form == FLOAT
    assert "slower in int8" in conv2.reason and "per tensor all the same" in conv2.reason


def test_nothing_changes_where_nothing_is_left_float():
    int8 = quantize_int8(tiny_model(), inputs(16))
    before = int8.SerializeToString()
    assert keep_float(int8) == [] and int8.SerializeToString() == before


def test_a_trained_cnn_keeps_every_other_conv_float(tmp_path):
    """models/mnist_cnn.onnx (Conv, Relu, MaxPool, Gemm), every other Conv left float: each one
    stays a float op with its float weight in onnxruntime's graph at level extended, the others
    run as QLinearConv, and the model passes full_check."""
    model = onnx.load(MODELS / "mnist_cnn.onnx")
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    left = convs[1::2]
    x = np.load(MODELS / "mnist_test.npz")["x"][:16].astype(np.float32)
    int8 = quantize_int8(model, x, nodes_to_exclude=left)
    onnx.checker.check_model(int8, full_check=True)
    seen = optimized(int8, "extended", tmp_path)
    assert left and [n for n in left if not float_weight(seen, n)] == []
    assert sum(n.op_type == "QLinearConv" for n in seen.graph.node) == len(convs) - len(left)

"""tools/compare_3x3.py on a tiny model built in code (the tool's own run needs the nudenet asset)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_cp.sites import find_convs
from onnx_cp.shapes import infer_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import compare_3x3  # noqa: E402


def two_conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    # x [1, 8, 12, 12] -> Conv 3x3 stride 2 (w0, b0) -> Relu -> Conv 3x3 pads 1 (w1, b1) -> y
    w0 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(np.ones(16, np.float32), "b0"),
             numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["h"], name="conv0", strides=[2, 2]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def site_named(model: onnx.ModelProto, name: str):
    shapes, _ = infer_shapes(model, {})
    return next(s for s in find_convs(model, shapes) if s.name == name)


def test_one_conv_model_computes_the_layer_as_in_the_whole_model():
    model = two_conv_model(np.random.default_rng(0))
    single = compare_3x3.one_conv_model(model, site_named(model, "conv1"))
    r = np.random.default_rng(1).standard_normal((1, 16, 5, 5)).astype(np.float32)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)  # the whole model, read from the second Conv's input on
    del cut.graph.node[:2]
    cut.graph.input[0].CopyFrom(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 16, 5, 5]))
    expected = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"r": r})[0]
    got = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": r})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_each_row_is_the_cheapest_tried_rank_within_the_level():
    model = two_conv_model(np.random.default_rng(0))
    layer = compare_3x3.Layer(model, site_named(model, "conv1"), seed=0)
    result = compare_3x3.compare_layer(layer, (0.6, 0.8), warmup=1, runs=3)
    rows = {(r["form"], r["level"]): r for r in result["rows"]}
    assert set(rows) == {(f, level) for f in ("cp4", "cp3", "tucker2", "gkpd", "svd") for level in (0.6, 0.8)}
    for (form, level), row in rows.items():
        assert row["reached"], (form, level)
        assert row["rel_error"] <= level and row["speedup"] > 0
        cheaper = [t for t in result["tried"] if t["form"] == form and t["refusal"] is None and t["macs"] < row["macs"]]
        assert all(t["rel_error"] > level for t in cheaper), (form, level)
    for level in (0.6, 0.8):  # one fit, two forms
        assert rows["cp4", level]["rank"] == rows["cp3", level]["rank"]
        assert rows["cp4", level]["rel_error"] == rows["cp3", level]["rel_error"]
    assert "not reached" not in compare_3x3.markdown(result)

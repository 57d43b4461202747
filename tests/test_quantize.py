"""onnx_cp.quantize: static INT8 that passes full_check and runs at every optimization level, keeps
metadata, names and external data, refuses quantized models in one line, honours exclusions, and
keeps each node (and the whole model) float where int8 does not pay, judged by injected timings.
No timing assertions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_cp import provenance
from onnx_cp.bench import profile_nodes
from onnx_cp.calibrate.patches import extract, sample_positions
from onnx_cp.conv import conv_spec
from onnx_cp.errors import OnnxCpError
from onnx_cp.evaluate import load_dataset
from onnx_cp.measure import Measurement
from onnx_cp.quantize import (FLOAT, INT8, QUANTIZABLE, calibration_feeds, int8_error, int8_quantizer,
                              per_node_view, quantize_fastest, quantize_int8, refusal, split_held_back)
from onnx_cp.quantize import chain_stats, rounding
from onnx_cp.quantize.chain_stats import chain_statistics
from onnx_cp.quantize.chains import find_chains
from onnx_cp.quantize.equalize import equalize_links, equalized_moments, fill_scales
from onnx_cp.quantize.rounding import gptq_levels
from onnx_cp.runtime import OPT_LEVELS, open_session, session_options

MODELS = Path(__file__).resolve().parent.parent / "models"
C, HW, CLASSES = 4, 10, 5
CHAIN = ["conv3/cp/reduce", "conv3/cp/spatial", "conv3/cp/expand"]
# Relative L2 error of INT8 outputs against float on this random-weight model's held-back inputs:
# measured 0.051 (0.022 on the calibration inputs themselves), the same at every level; seven
# layers each rounding to uint8 over MinMax ranges of 16 inputs.
TOL = 0.1


def tiny_model(opset: int = 17) -> onnx.ModelProto:
    """x -> conv1 3x3 -> Relu -> conv2 1x1 -> Relu -> conv3 as a CP chain (1x1, depthwise 3x3, 1x1)
    -> Flatten -> matmul -> fc (Gemm) -> y; with an onnx_cp provenance entry and another metadata key."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "wr"], ["t1"], name=CHAIN[0], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["t1", "ws"], ["t2"], name=CHAIN[1], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         group=2),
        helper.make_node("Conv", ["t2", "we", "be"], ["c3"], name=CHAIN[2], kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["c3"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["m", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w1", 8, C, 3, 3), init("b1", 8), init("w2", 8, 8, 1, 1), init("wr", 2, 8, 1, 1),
             init("ws", 2, 1, 3, 3), init("we", 8, 2, 1, 1), init("be", 8), init("wm", 8 * HW * HW, 16, scale=0.05),
             init("wf", CLASSES, 16), init("bf", CLASSES)]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", C, HW, HW])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    provenance.record(model, {"method": "nls", "layers": [{"node": "conv3", "nodes": CHAIN}]})
    model.metadata_props.add(key="author", value="tests")
    onnx.checker.check_model(model, full_check=True)
    return model


def inputs(count: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, C, HW, HW)).astype(np.float32)


def outputs(model: onnx.ModelProto, x: np.ndarray, opt_level: str = "all") -> np.ndarray:
    session = open_session(model, session_options(threads=1, opt_level=opt_level, quiet=True))
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reads_int8(model: onnx.ModelProto) -> dict[str, bool]:
    """Per Conv/Gemm/MatMul: whether both its operands are dequantized (quantize_static put it in int8)."""
    dequantized = {t for n in model.graph.node if n.op_type == "DequantizeLinear" for t in n.output}
    return {n.name: all(t in dequantized for t in n.input[:2]) for n in model.graph.node if n.op_type in QUANTIZABLE}


def test_int8_passes_full_check_and_runs_at_every_level_close_to_float():
    model, x = tiny_model(), inputs()
    int8 = quantize_int8(model, x[:16])
    onnx.checker.check_model(int8, full_check=True)
    assert all(reads_int8(int8).values())
    assert [i.name for i in int8.graph.input] == ["x"] and [o.name for o in int8.graph.output] == ["y"]
    reference = outputs(model, x[16:])
    for level in OPT_LEVELS:
        assert relative(outputs(int8, x[16:], level), reference) < TOL, level
    assert int8_error(model, int8, x[16:]) == pytest.approx(relative(outputs(int8, x[16:]), reference), rel=1e-6)


def test_int8_keeps_metadata_and_node_names():
    model = tiny_model()
    int8 = quantize_int8(model, inputs())
    assert [(p.key, p.value) for p in int8.metadata_props] == [(p.key, p.value) for p in model.metadata_props]
    assert provenance.read_cp_layers(int8)[0]["conv3"].nodes == tuple(CHAIN)
    assert {n.name for n in model.graph.node if n.op_type in QUANTIZABLE} <= {n.name for n in int8.graph.node}


def test_unnamed_nodes_get_onnxruntime_names_and_can_be_excluded():
    model = tiny_model()
    model.graph.node[2].name = ""  # conv2, the third node: onnxruntime calls it Conv_2
    int8 = quantize_int8(model, inputs(), nodes_to_exclude=["Conv_2"])
    assert reads_int8(int8)["Conv_2"] is False and reads_int8(int8)["conv1"] is True


def test_model_with_external_data_quantizes_as_in_memory(tmp_path):
    model, x = tiny_model(), inputs()
    path = tmp_path / "tiny.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving with external data rewrites the tensors it is given
    onnx.save_model(saved, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tiny.weights", size_threshold=0)
    assert (tmp_path / "tiny.weights").exists()
    from_file, in_memory = quantize_int8(path, x), quantize_int8(model, x)
    onnx.checker.check_model(from_file, full_check=True)
    np.testing.assert_array_equal(outputs(from_file, x), outputs(in_memory, x))


def test_old_opset_is_upgraded_to_13():
    model, x = tiny_model(opset=11), inputs()
    int8 = quantize_int8(model, x[:16])
    assert next(o.version for o in int8.opset_import if o.domain in ("", "ai.onnx")) >= 13
    onnx.checker.check_model(int8, full_check=True)
    assert relative(outputs(int8, x[16:]), outputs(model, x[16:])) < TOL


def test_opset_the_converter_cannot_upgrade_is_refused_in_one_line(monkeypatch):
    import onnx.version_converter

    def fail(model, version):
        raise RuntimeError("No adapter for op Foo\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(OnnxCpError) as exc:
        quantize_int8(tiny_model(opset=11), inputs())
    assert "opset 11" in str(exc.value) and "No adapter for op Foo" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_quantized_models_are_refused_in_one_line():
    model, x = tiny_model(), inputs()
    assert refusal(model) is None
    int8 = quantize_int8(model, x)
    reason = refusal(int8)
    assert "QuantizeLinear" in reason and "DequantizeLinear" in reason and "float model" in reason
    assert "\n" not in reason
    with pytest.raises(OnnxCpError, match="quantized already") as exc:
        quantize_int8(int8, x)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("op, inputs_", [("ConvInteger", ["x", "w"]), ("MatMulInteger", ["x", "w"]),
                                         ("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"])])
def test_integer_ops_mark_a_model_quantized(op, inputs_):
    graph = helper.make_graph([helper.make_node(op, inputs_, ["y"], name="q")], "g", [], [])
    assert op in refusal(helper.make_model(graph))


def test_quantized_subgraph_marks_a_model_quantized():
    body = helper.make_graph([helper.make_node("DequantizeLinear", ["a", "s"], ["b"])], "body", [],
                             [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)], "g", [], [])
    assert "DequantizeLinear x2" in refusal(helper.make_model(graph))


def test_excluded_nodes_stay_float():
    int8 = quantize_int8(tiny_model(), inputs(), nodes_to_exclude=["conv2", "fc"])
    assert reads_int8(int8) == {"conv1": True, "conv2": False, CHAIN[0]: True, CHAIN[1]: True, CHAIN[2]: True,
                                "matmul": True, "fc": False}
    with pytest.raises(OnnxCpError, match="'conv9'") as exc:
        quantize_int8(tiny_model(), inputs(), nodes_to_exclude=["conv9"])
    assert "\n" not in str(exc.value)


def test_arithmetic_ops_stay_float():
    """x -> matmul -> Add -> Relu -> Mul -> Add -> y (a dense layer, its bias, a BatchNormalization
    as Mul and Add): the matmul is quantized; no Add or Mul output is (OP_TYPES)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Mul", ["r", "scale"], ["s"]),
             helper.make_node("Add", ["s", "shift"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w", (16, 16)), ("b", (16,)), ("scale", (16,)), ("shift", (16,)))]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    int8 = quantize_int8(model, rng.standard_normal((16, 16)).astype(np.float32))
    producer = {t: n.op_type for n in int8.graph.node for t in n.output}
    quantized = [producer.get(n.input[0]) for n in int8.graph.node if n.op_type == "QuantizeLinear"]
    assert reads_int8(int8) == {"matmul": True}
    assert not {"Add", "Mul"} & set(quantized)


def test_feed_dicts_calibrate_as_the_array_does():
    model, x = tiny_model(), inputs()
    from_array = quantize_int8(model, x[:16])
    from_feeds = quantize_int8(model, [{"x": x[i:i + 1]} for i in range(16)])
    np.testing.assert_array_equal(outputs(from_array, x[16:]), outputs(from_feeds, x[16:]))


@pytest.mark.parametrize("bad, says", [
    (np.zeros((4, 3, HW, HW), np.float32), "shape 1x3x10x10"),
    (np.zeros((4, C, HW), np.float32), "shape 1x4x10"),
    (np.full((4, C, HW, HW), np.nan, np.float32), "finite"),
    ([{"image": np.zeros((1, C, HW, HW), np.float32)}], "['image']"),
    ([], "non-empty"),
])
def test_calibration_inputs_that_do_not_fit_are_refused_in_one_line(bad, says):
    with pytest.raises(OnnxCpError) as exc:
        calibration_feeds(tiny_model(), bad)
    assert says in str(exc.value) and "\n" not in str(exc.value)


def test_an_array_of_inputs_needs_a_model_of_one_input():
    model = tiny_model()
    model.graph.input.append(helper.make_tensor_value_info("x2", onnx.TensorProto.FLOAT, [1]))
    with pytest.raises(OnnxCpError, match="list of feed dicts"):
        calibration_feeds(model, inputs())


def test_held_back_inputs_are_the_last_share():
    x = inputs(8)
    calib, held = split_held_back(x, 0.25)
    assert len(calib) == 6 and np.array_equal(held, x[6:])
    with pytest.raises(OnnxCpError, match="at least 2"):
        split_held_back(x[:1])


# -- each node in its fastest form, by injected timings -------------------------------------------------------

class FakeTiming:
    """Timing from tables: a node's ms is ``int8[name]`` where it is in int8, else ``float_[name]``;
    a whole model's ms is the sum, unless ``whole_ms`` gives the figures of each call in turn."""

    def __init__(self, float_: dict[str, float], int8: dict[str, float], whole_ms=None):
        self.float_, self.int8, self.whole_ms, self.whole_calls = float_, int8, whole_ms, []

    def timing(self) -> Measurement:
        return Measurement.injected(self)

    def layers(self, models):
        per_model = []
        for model in models:
            names = [n.name for n in model.graph.node]
            assert not any("/cp/" in name for name in names), "profiled without the per-node view"
            int8 = reads_int8(model)
            per_model.append({n.output[0]: (self.int8 if int8[n.name] else self.float_)[n.name.replace("|", "/")]
                              for n in model.graph.node if n.op_type in QUANTIZABLE})
        return per_model

    def whole(self, models):
        self.whole_calls.append(len(models))
        if self.whole_ms is not None:
            return list(self.whole_ms[len(self.whole_calls) - 1])
        return [sum((self.int8 if q else self.float_)[name] for name, q in reads_int8(m).items()) for m in models]


NAMES = ["conv1", "conv2", *CHAIN, "matmul", "fc"]


def times(**given) -> dict[str, float]:
    table = dict.fromkeys(NAMES, 1.0)
    table.update({k.replace("__", "/cp/"): v for k, v in given.items()})
    return table


def test_nodes_slower_in_int8_stay_float():
    model, x = tiny_model(), inputs()
    fake = FakeTiming(times(), times(conv1=0.3, conv2=0.4, conv3__reduce=0.5, conv3__spatial=1.6,
                                     conv3__expand=0.5, matmul=0.5, fc=0.5))
    result = quantize_fastest(model, x[:16], fake.timing(), held_back=x[16:])
    forms = {n.node: n.form for n in result.nodes}
    assert forms == {**dict.fromkeys(NAMES, INT8), CHAIN[1]: FLOAT}
    assert result.quantized and reads_int8(result.model) == {**dict.fromkeys(NAMES, True), CHAIN[1]: False}
    assert fake.whole_calls == [3, 2]  # float, all int8, the slow node float; then float and the pick again
    spatial = next(n for n in result.nodes if n.node == CHAIN[1])
    assert (spatial.float_ms, spatial.int8_ms) == (1.0, 1.6) and "slower" in spatial.reason
    assert result.error == pytest.approx(int8_error(model, result.model, x[16:])) and 0 < result.error < TOL
    onnx.checker.check_model(result.model, full_check=True)


def test_a_gain_under_min_gain_does_not_pay():
    fake = FakeTiming(times(), times(conv1=0.3, conv2=0.97, conv3__reduce=0.5, conv3__spatial=0.5,
                                     conv3__expand=0.5, matmul=0.5, fc=0.5), whole_ms=[[7.0, 3.9, 3.8], [7.0, 3.8]])
    result = quantize_fastest(tiny_model(), inputs(), fake.timing(), min_gain=0.05)
    conv2 = next(n for n in result.nodes if n.node == "conv2")
    assert conv2.form == FLOAT and "under 5%" in conv2.reason
    assert reads_int8(result.model)["conv2"] is False


def test_float_model_comes_back_when_the_whole_int8_model_is_not_faster():
    model, x = tiny_model(), inputs()
    fake = FakeTiming(times(), times(**{n.replace("/cp/", "__"): 0.5 for n in NAMES}), whole_ms=[[1.0, 1.2]])
    result = quantize_fastest(model, x[:16], fake.timing(), held_back=x[16:])
    assert result.model is model and not result.quantized
    assert all(n.form == FLOAT for n in result.nodes) and result.speedup == 1.0 and result.error == 0.0
    assert any("float model is returned" in note for note in result.notes)


def test_int8_that_pays_in_one_run_only_is_not_kept():
    model = tiny_model()
    fake = FakeTiming(times(), times(**{n.replace("/cp/", "__"): 0.5 for n in NAMES}), whole_ms=[[1.0, 0.5], [1.0, 0.97]])
    result = quantize_fastest(model, inputs(), fake.timing())
    assert result.model is model and fake.whole_calls == [2, 2]
    assert (result.float_ms, result.int8_ms) == (1.0, 0.97)


def test_every_node_in_int8_is_kept_when_it_beats_the_mix():
    fake = FakeTiming(times(), times(conv1=0.3, conv2=1.2, conv3__reduce=0.5, conv3__spatial=0.5,
                                     conv3__expand=0.5, matmul=0.5, fc=0.5), whole_ms=[[2.0, 1.0, 1.5], [2.0, 1.0]])
    result = quantize_fastest(tiny_model(), inputs(), fake.timing())
    conv2 = next(n for n in result.nodes if n.node == "conv2")
    assert conv2.form == INT8 and "faster with it in int8" in conv2.reason
    assert all(reads_int8(result.model).values()) and result.speedup == 2.0


def test_excluded_nodes_stay_float_whatever_they_measure():
    fake = FakeTiming(times(), times(**{n.replace("/cp/", "__"): 0.1 for n in NAMES}))
    result = quantize_fastest(tiny_model(), inputs(), fake.timing(), nodes_to_exclude=["fc"])
    fc = next(n for n in result.nodes if n.node == "fc")
    assert fc.form == FLOAT and fc.int8_ms is None and reads_int8(result.model)["fc"] is False


# -- per-node attribution on quantized graphs, real profiles -----------------------------------------------------

@pytest.mark.parametrize("level", list(OPT_LEVELS))
def test_quantized_nodes_are_attributed_to_their_nodes_at_every_level(level):
    model = tiny_model()
    int8 = quantize_int8(model, inputs())
    for view in (per_node_view(model), per_node_view(int8)):
        profile, = profile_nodes([view], warmup=1, runs=2, opt_level=level, input_shapes={"x": (1, C, HW, HW)})
        assert all(layer.mapped for layer in profile.layers), [l.layer for l in profile.layers if not l.mapped]
        assert not any(layer.op in ("QuantizeLinear", "DequantizeLinear") for layer in profile.layers)
        timed = {out for layer in profile.layers for out in layer.outputs}
        assert {n.output[0] for n in view.graph.node if n.op_type in QUANTIZABLE} <= timed


# -- the repository's trained models ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, agree", [("mnist_cnn", "mnist_test", 0.98), ("charcnn36", "charcnn36_test", 0.95)])
def test_trained_models_in_int8_agree_with_float(name, data, agree):
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    x, _ = load_dataset(MODELS / f"{data}.npz")
    calib, held = x[:64], x[64:564].astype(np.float32)
    int8 = quantize_int8(model, calib)
    onnx.checker.check_model(int8, full_check=True)
    session_f, session_q = (open_session(m, session_options(threads=1, quiet=True)) for m in (model, int8))
    name_in = model.graph.input[0].name
    same = np.mean(session_f.run(None, {name_in: held})[0].argmax(1) == session_q.run(None, {name_in: held})[0].argmax(1))
    assert same >= agree


# -- low-rank chains: equalized and rounded for their outputs ----------------------------------------------------

STAGES = ["layer/cp/reduce", "layer/cp/vertical", "layer/cp/horizontal", "layer/cp/expand"]
RANK = 6


def chain_model(group: int = 1, seed: int = 0) -> onnx.ModelProto:
    """x -> conv1 3x3 -> Relu -> a CP chain (1x1 reduce, 3x1 and 1x3 depthwise, 1x1 expand, both
    1x1s with ``group`` groups) -> Relu -> y. The reduce's output channels span 0.05 to 30 and are
    one-sided (all >= 0 or all <= 0, one mixed), the expand undoes the spread: in float a plain
    Conv, for a per-tensor uint8 range a tensor whose small channels round to a level or two."""
    rng = np.random.default_rng(seed)

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    spread = np.array([30, 1, 0.05, 3, 0.3, 10], np.float32)
    sign = np.array([1, -1, 1, 1, -1, 0], np.float32)
    reduce = np.abs(f(RANK, 8 // group, 1, 1)) * np.where(sign == 0, np.sign(f(RANK)), sign)[:, None, None, None]
    within = np.arange(RANK).reshape(group, RANK // group)  # the expand's input channels, group by group
    expand = np.concatenate([f(8 // group, RANK // group, 1, 1) / spread[within[g]][None, :, None, None]
                             for g in range(group)])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wr"], ["t1"], name=STAGES[0], kernel_shape=[1, 1], group=group),
        helper.make_node("Conv", ["t1", "wv"], ["t2"], name=STAGES[1], kernel_shape=[3, 1], pads=[1, 0, 1, 0],
                         group=RANK),
        helper.make_node("Conv", ["t2", "wh"], ["t3"], name=STAGES[2], kernel_shape=[1, 3], pads=[0, 1, 0, 1],
                         group=RANK),
        helper.make_node("Conv", ["t3", "we", "be"], ["c2"], name=STAGES[3], kernel_shape=[1, 1], group=group),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", f(8, C, 3, 3) * 0.3), ("b1", f(8) * 0.1), ("wr", reduce * spread[:, None, None, None]),
        ("wv", f(RANK, 1, 3, 1)), ("wh", f(RANK, 1, 1, 3)), ("we", expand), ("be", f(8) * 0.1))]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", C, HW, HW])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, HW, HW])
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    provenance.record(model, {"method": "nls", "layers": [{"node": "layer", "nodes": STAGES}]})
    onnx.checker.check_model(model, full_check=True)
    return model


def chain_inputs(count: int = 48) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, C, HW, HW)).astype(np.float32)


def test_chains_are_the_links_and_stages_of_the_metadata():
    chains = find_chains(chain_model())
    assert [(l.producer, l.consumer, l.tensor) for l in chains.links] == [
        (STAGES[0], STAGES[1], "t1"), (STAGES[1], STAGES[2], "t2"), (STAGES[2], STAGES[3], "t3")]
    assert chains.stages == tuple(STAGES)
    unmarked = chain_model()  # no metadata, and names without a decomposition's mark: plain Convs
    del unmarked.metadata_props[:]
    for node in unmarked.graph.node:
        node.name = node.name.replace("/cp/", "_")
    assert not find_chains(unmarked)


def test_fill_scales_put_every_channel_in_one_interval_filling_it():
    low, high = np.array([-2.4, -2.4, -0.2, 0.0, 0.0, -1.0]), np.array([-0.5, 0.15, 2.4, 0.0, 3.0, 0.0])
    c = fill_scales(low, high)
    lo, hi = np.minimum(low * c, high * c), np.maximum(low * c, high * c)
    top, bottom = hi.max(), lo.min()
    assert top == pytest.approx(3.0)  # the tensor keeps its largest extent
    assert c[3] == 1.0  # a channel that is zero throughout is left alone
    live = (low < 0) | (high > 0)
    # every live channel reaches one end of the common interval, so none could be scaled up
    assert np.all(np.isclose(hi[live], top) | np.isclose(lo[live], bottom))
    fill = (hi - lo) / (top - bottom)
    before = (high - low) / (max(high.max(), 0) - min(low.min(), 0))
    assert np.all(fill[live] >= before[live] - 1e-12) and np.mean(np.log(fill[live] / before[live])) > 0.5


@pytest.mark.parametrize("group", [1, 2])
def test_equalized_chain_computes_what_the_original_does(group):
    model, x = chain_model(group), chain_inputs()
    chains = find_chains(model)
    feeds = calibration_feeds(model, x[:16])
    stats = chain_statistics(model, feeds, chains)
    equalized, scales = equalize_links(model, chains.links, stats.low, stats.high)
    onnx.checker.check_model(equalized, full_check=True)
    assert relative(outputs(equalized, x[16:]), outputs(model, x[16:])) < 1e-5
    after = chain_statistics(equalized, feeds, chains)
    for link in chains.links:  # each channel spans more of its tensor's range than before
        def fill(low, high):
            return np.median((high - low) / (max(high.max(), 0) - min(low.min(), 0)))
        assert fill(after.low[link.tensor], after.high[link.tensor]) > \
            1.5 * fill(stats.low[link.tensor], stats.high[link.tensor]), link.tensor
    assert np.any(scales["t1"] < 0)  # the negative channels were flipped


def test_equalized_moments_are_those_of_the_equalized_chain():
    model, x = chain_model(), chain_inputs()
    chains = find_chains(model)
    feeds = calibration_feeds(model, x[:16])
    stats = chain_statistics(model, feeds, chains)
    equalized, scales = equalize_links(model, chains.links, stats.low, stats.high)
    inputs_ = {node.name: node.input[0] for node in model.graph.node}
    moved = equalized_moments(stats.moments, inputs_, scales)
    direct = chain_statistics(equalized, feeds, chains).moments
    assert set(moved) == set(direct) == set(STAGES)  # the depthwise 3x1 and 1x3 stages too
    for name in STAGES:
        for a, b in zip(moved[name], direct[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def core_chain() -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> a Tucker-2 chain (1x1 reduce, dense 3x3 core, 1x1 expand) -> y, and inputs for it.
    The inputs' channels are two fixed mixes of two smooth patterns (and a little noise), so the
    core's input channels span two of their four directions; the core's weights are large along
    the other two, where they meet almost nothing. Their int8 step is set by those large weights:
    rounded to the nearest level, the errors along the used directions are large next to the
    small output; rounded for the outputs, they move to the unused ones."""
    rng = np.random.default_rng(3)
    stages = ["layer/tucker2/reduce", "layer/tucker2/core", "layer/tucker2/expand"]
    mixes, reduce = rng.standard_normal((C, 2)), rng.standard_normal((4, C))
    unused = np.linalg.svd(reduce @ mixes)[0][:, 2:]  # (4, 2): the core's input directions no input takes
    core = 0.1 * rng.standard_normal((6, 4, 3, 3)) + 3.0 * np.einsum("ou,cu,hw->ochw", rng.standard_normal((6, 2)),
                                                                       unused, np.ones((3, 3)))
    nodes = [helper.make_node("Conv", ["x", "wr"], ["t1"], name=stages[0], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["t1", "wc"], ["t2"], name=stages[1], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["t2", "we", "be"], ["y"], name=stages[2], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("wr", reduce[:, :, None, None]), ("wc", core), ("we", rng.standard_normal((C, 6, 1, 1))),
        ("be", 0.1 * rng.standard_normal(C)))]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", C, HW, HW])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", C, HW, HW])
    model = helper.make_model(helper.make_graph(nodes, "tucker2", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    provenance.record(model, {"method": "nls", "layers": [{"node": "layer", "nodes": stages}]})
    yy, xx = np.meshgrid(np.linspace(0, 1, HW), np.linspace(0, 1, HW), indexing="ij")
    patterns = np.stack([np.sin(3 * yy + xx), np.cos(2 * xx - yy)])  # (2, HW, HW)
    amplitudes = rng.standard_normal((48, 2))
    x = np.einsum("nb,cb,bhw->nchw", amplitudes, mixes, patterns) + 0.01 * rng.standard_normal((48, C, HW, HW))
    return model, x.astype(np.float32)


def test_a_core_stage_rounded_for_its_patches_beats_nearest_rounding():
    model, x = core_chain()
    chains = find_chains(model)
    assert chains.stages == ("layer/tucker2/reduce", "layer/tucker2/core", "layer/tucker2/expand")
    core = next(n for n in model.graph.node if n.name == chains.stages[1])
    moment = chain_statistics(model, calibration_feeds(model, x[:32]), chains).moments[core.name]
    assert len(moment) == 1 and moment[0].shape == (36, 36)  # 4 channels x 3 x 3 taps
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    weight = inits["wc"].reshape(6, -1)
    scale = np.abs(weight).max(1) / 127
    levels = gptq_levels(weight, moment[0], scale)
    t1 = np.einsum("oc,nchw->nohw", inits["wr"][:, :, 0, 0], x[32:])  # the core's held-back inputs
    spec = conv_spec(core, (6, 4, 3, 3))
    everywhere = sample_positions(np.random.default_rng(0), range(len(t1)), (HW, HW), len(t1) * HW * HW)
    patches = extract(t1, 0, everywhere, spec, (HW, HW)).reshape(len(everywhere), -1).astype(np.float64)

    def error(q):
        return np.linalg.norm(patches @ (weight - q * scale[:, None]).T) / np.linalg.norm(patches @ weight.T)

    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    # measured 0.0145 against 0.0475
    assert error(levels) < 0.5 * error(nearest), (error(levels), error(nearest))


def test_the_quantized_chain_rounds_its_core_unless_it_is_too_wide(monkeypatch):
    model, x = core_chain()

    def quantized() -> tuple[onnx.ModelProto, str]:
        with int8_quantizer(model, x[:32], chain_aware=True) as quantizer:
            out = quantizer.quantize()
            notes = quantizer.notes
        onnx.checker.check_model(out, full_check=True)
        return out, notes[0]

    def core_levels(q: onnx.ModelProto) -> np.ndarray:
        inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
        node = next(n for n in q.graph.node if n.name == "layer/tucker2/core")
        dq = next(n for n in q.graph.node if n.output[0] == node.input[1])
        return inits[dq.input[0]]

    rounded, notes = quantized()
    assert "3 stage(s) rounded by GPTQ" in notes
    monkeypatch.setattr(chain_stats, "MAX_COLUMNS", 35)  # the core's 36 columns: onnxruntime rounds it
    plain, notes = quantized()
    assert "2 stage(s) rounded by GPTQ" in notes
    assert not np.array_equal(core_levels(rounded), core_levels(plain))


def test_gptq_in_blocks_gives_the_levels_of_gptq_column_by_column(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 3000)) + 0.1 * rng.standard_normal((40, 3000))
    weight = rng.standard_normal((5, 40))
    scale = np.abs(weight).max(1) / 127
    blocked = gptq_levels(weight, x @ x.T / x.shape[1], scale)  # BLOCK (128) > 40 columns: one block
    monkeypatch.setattr(rounding, "BLOCK", 7)  # blocks that do not divide the 40 columns
    assert np.array_equal(gptq_levels(weight, x @ x.T / x.shape[1], scale), blocked)
    monkeypatch.setattr(rounding, "BLOCK", 1)  # column by column
    assert np.array_equal(gptq_levels(weight, x @ x.T / x.shape[1], scale), blocked)


def test_gptq_rounds_to_the_nearest_level_for_uncorrelated_inputs():
    rng = np.random.default_rng(0)
    weight, scale = rng.standard_normal((5, 7)), np.full(5, 0.01)
    levels = gptq_levels(weight, np.eye(7), scale)
    assert np.array_equal(levels, np.clip(np.round(weight / scale[:, None]), -127, 127))


def test_gptq_beats_nearest_rounding_on_correlated_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)) @ rng.standard_normal((4, 4000)) + 0.05 * rng.standard_normal((16, 4000))
    weight = rng.standard_normal((8, 16))
    scale = np.abs(weight).max(1) / 127
    levels = gptq_levels(weight, x @ x.T / x.shape[1], scale)
    assert levels.dtype == np.int8 and np.abs(levels.astype(int)).max() <= 127

    def error(q):
        return np.linalg.norm((weight - q * scale[:, None]) @ x) / np.linalg.norm(weight @ x)

    assert error(levels) < 0.5 * error(np.round(weight / scale[:, None]))


@pytest.mark.parametrize("group", [1, 2])
def test_chain_with_badly_scaled_channels_quantizes_far_closer_to_float(group):
    model, x = chain_model(group), chain_inputs()
    with int8_quantizer(model, x[:32], chain_aware=True) as quantizer:
        tuned = quantizer.quantize()
        notes = quantizer.notes
    plain = quantize_int8(model, x[:32])
    onnx.checker.check_model(tuned, full_check=True)
    assert all(reads_int8(tuned).values())
    assert [(p.key, p.value) for p in tuned.metadata_props] == [(p.key, p.value) for p in model.metadata_props]
    # measured 0.52 -> 0.023 (group 1) and 0.18 -> 0.018 (group 2) on the held-back inputs
    assert int8_error(model, tuned, x[32:]) < 0.25 * int8_error(model, plain, x[32:])
    assert "3 link tensor(s) equalized, 4 stage(s) rounded" in notes[0] and notes[0].endswith("kept")


def test_chains_keep_onnxruntime_rounding_where_theirs_measures_worse(monkeypatch):
    model, x = chain_model(), chain_inputs()
    monkeypatch.setattr(rounding, "gptq_levels", lambda weight, moment, scale: np.zeros(weight.shape, np.int8))
    with int8_quantizer(model, x[:32], chain_aware=True) as quantizer:
        chosen = quantizer.quantize()
        notes = quantizer.notes
    plain = quantize_int8(model, x[:32])
    assert notes[0].endswith("so onnxruntime's is kept")
    assert relative(outputs(chosen, x[32:]), outputs(plain, x[32:])) == 0.0


def test_quantize_fastest_says_how_the_chains_were_quantized():
    fake = FakeTiming(times(), times(**{n.replace("/cp/", "__"): 0.5 for n in NAMES}))
    result = quantize_fastest(tiny_model(), inputs(), fake.timing())
    assert result.notes[0].startswith("low-rank chains: 2 link tensor(s) equalized")
    assert quantize_fastest(tiny_model(), inputs(), FakeTiming(times(), times()).timing(),
                            chain_aware=False).notes[0].startswith("whole-model medians")

"""onnx-cp's LSTM converter for onnx2torch: ONNX LSTM nodes import as torch modules that compute
what onnxruntime computes, and export back as one ONNX LSTM node; operators without a converter
are named before any conversion.

The tiny CRNN (a text recognizer's shape, built in torch and exported with the TorchScript exporter):

    x (N x 1 x 8 x 16) -> Conv 3x3 1->4 -> SiLU -> MaxPool (4, 2) -> Conv 3x3 4->6 -> SiLU
      -> ReduceMean over H -> Transpose to (T=8, N, 6) -> LSTM 6->5 [bidirectional]
      -> MatMul + Add 5[x2]->7 per time step -> logits (T, N, 7)
"""
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import run
from onnx_cp import OnnxCpError

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")
pytestmark = pytest.mark.torch

from onnx_cp.finetune import op_counts, to_onnx, to_torch  # noqa: E402
from onnx_cp.finetune.convert import output_list  # noqa: E402
from onnx_cp.finetune.converters import missing_converters  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
PPOCR = Path(__file__).resolve().parent.parent / "assets" / "ch_PP-OCRv4_rec_infer.onnx"


class CRNN(torch.nn.Module):
    def __init__(self, bidirectional: bool = False, classes: int = 7):
        super().__init__()
        nn = torch.nn
        self.cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.MaxPool2d((4, 2)),
                                 nn.Conv2d(4, 6, 3, padding=1), nn.SiLU())
        self.rnn = nn.LSTM(6, 5, bidirectional=bidirectional)
        self.fc = nn.Linear(10 if bidirectional else 5, classes)

    def forward(self, x):
        features = self.cnn(x).mean(2).permute(2, 0, 1)  # T x N x C
        y, _ = self.rnn(features)
        return self.fc(y)


def export_onnx(net, x, output_names=("logits",), dynamic=None) -> onnx.ModelProto:
    """``net`` exported by torch's TorchScript exporter at opset 14, input "x", batch dynamic."""
    buffer = io.BytesIO()
    dynamic = dynamic or {"x": {0: "batch"}, **{name: {1: "batch"} for name in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), buffer, dynamo=False, opset_version=14, input_names=["x"],
                          output_names=list(output_names), dynamic_axes=dynamic)
    return onnx.load_from_string(buffer.getvalue())


def crnn_onnx(bidirectional: bool = False, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    return export_onnx(CRNN(bidirectional), torch.zeros(2, 1, 8, 16))


def torch_outputs(module, *xs) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in output_list(module(*(torch.from_numpy(x) for x in xs)))]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_a_torch_exported_crnn_imports_and_exports_back_as_one_lstm(bidirectional):
    model = crnn_onnx(bidirectional)
    assert op_counts(model)["LSTM"] == 1
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 16)).astype(np.float32)
    module = to_torch(model)
    np.testing.assert_allclose(torch_outputs(module, x)[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)

    with torch.no_grad():  # move the LSTM's weights, so a stale copy of the input's would show
        for p in module.parameters():
            p.mul_(1.1)
    back = to_onnx(module, model, example=x[:2])
    onnx.checker.check_model(back, full_check=True)
    lstm, = [n for n in back.graph.node if n.op_type == "LSTM"]
    original, = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert lstm.name == original.name
    assert {a.name: helper.get_attribute_value(a) for a in lstm.attribute} == {
        "hidden_size": 5, "direction": b"bidirectional" if bidirectional else b"forward"}
    assert op_counts(back)["Conv"] == 2 and op_counts(back)["LSTM"] == 1
    expected = torch_outputs(module, x)[0]
    np.testing.assert_allclose(run(back, {"x": x})[0], expected, rtol=RTOL, atol=ATOL)  # batch 3: dynamic
    assert not np.allclose(run(back, {"x": x})[0], run(model, {"x": x})[0], atol=1e-3)


def lstm_graph(direction: str, *, bias: bool, states: bool, seed: int = 0) -> onnx.ModelProto:
    """X (T=4, N=3, I=6) [, initial_h, initial_c] -> LSTM hidden 5 -> Y, Y_h, Y_c, weights random."""
    rng = np.random.default_rng(seed)
    dirs, hidden = (2 if direction == "bidirectional" else 1), 5
    weights = {"W": (dirs, 4 * hidden, 6), "R": (dirs, 4 * hidden, hidden)}
    if bias:
        weights["B"] = (dirs, 8 * hidden)
    inits = [numpy_helper.from_array((0.5 * rng.standard_normal(s)).astype(np.float32), n) for n, s in weights.items()]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 3, 6])]
    if states:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, 3, hidden])
                   for n in ("initial_h", "initial_c")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B" if bias else "", "", *(["initial_h", "initial_c"] if states
                                                                              else [])],
                            ["Y", "Y_h", "Y_c"], name="lstm", hidden_size=hidden, direction=direction)
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, dirs, 3, hidden]),
               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [dirs, 3, hidden]),
               helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [dirs, 3, hidden])]
    graph = helper.make_graph([node], "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("direction, bias, states", [("forward", True, False), ("reverse", True, True),
                                                     ("bidirectional", False, True), ("bidirectional", True, False)])
def test_every_output_matches_onnxruntime(direction, bias, states):
    model = lstm_graph(direction, bias=bias, states=states)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(2)
    dirs = 2 if direction == "bidirectional" else 1
    feeds = {"X": rng.standard_normal((4, 3, 6)).astype(np.float32)}
    if states:
        feeds.update({n: rng.standard_normal((dirs, 3, 5)).astype(np.float32) for n in ("initial_h", "initial_c")})
    expected = run(model, feeds)
    got = torch_outputs(to_torch(model), *feeds.values())
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_an_lstm_feature_the_converter_lacks_is_named():
    model = lstm_graph("forward", bias=True, states=False)
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("clip", 3.0))
    with pytest.raises(OnnxCpError, match=r"LSTM 'lstm' cannot be converted: it clips the cell input.*"
                                          r"onnx_cp.rewrite with RewriteConfig\(calib=DATA\)"):
        to_torch(model)


def test_operators_without_a_converter_are_named_before_conversion():
    # x -> Relu -> com.example.Frobnicate -> Hardmax -> y
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Frobnicate", ["a"], ["b"], domain="com.example"),
         helper.make_node("Hardmax", ["b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    assert missing_converters(model) == ["Frobnicate (domain com.example, version 1)", "Hardmax (opset 17)"]
    with pytest.raises(OnnxCpError) as info:
        to_torch(model, what="m.onnx")
    message = str(info.value)
    assert message.startswith("fine-tuning cannot import m.onnx: onnx2torch ") and info.value.usage
    assert message.endswith("has no converter for Frobnicate (domain com.example, version 1), Hardmax (opset 17); "
                            "use onnx_cp.rewrite with RewriteConfig(calib=DATA), which needs no import")
    assert info.value.cli.endswith("use `onnx-cp rewrite --calib DATA`, which needs no import")
    assert missing_converters(crnn_onnx()) == []


def test_the_ppocr_recognizer_has_a_converter_for_every_operator():
    if not PPOCR.exists():
        pytest.skip(f"{PPOCR} is absent (python tools/fetch_assets.py)")
    assert missing_converters(onnx.load(PPOCR)) == []

"""Every legal ONNX name survives every command: tensors and nodes named like exporters name them
('387', '/conv1/Conv', 'onnx::Conv_1', 'input.1'), with spaces, unicode, markup characters, node
names equal to tensor names or empty, and initializers listed among the graph inputs. Each command
runs through the CLI in this process: rewrite (with its JSON report), inspect, evaluate, bench (its
JSON, Markdown and HTML reports) and finetune.

The model, every name drawn by hypothesis:

    x (N x 3 x 8 x 8) -> Conv 3x3 3->8 (w1, b1) -> Relu -> Conv 3x3 8->6 (w2, b2) -> GlobalAveragePool
      -> Flatten -> y (N x 6)

Both kernels are exact rank-2 CP tensors, so a rank-2 rewrite computes what the original does.
"""
from __future__ import annotations

import json
import string

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnx_cp.cli import cli
from onnx_cp.graph import display_name

TENSORS = ("x", "w1", "b1", "h1", "h2", "w2", "b2", "h3", "pooled", "y")
NODES = ("conv1", "relu", "conv2", "pool", "flatten")
X_SHAPE, CLASSES = (1, 3, 8, 8), 6
# Names exporters write, names torch and the command line treat specially, and the odd ones.
KNOWN = ["387", "0", "1", "12", "/conv1/Conv", "/conv1/Conv_output_0", "onnx::Conv_1", "input.1", "x", "a b",
         " lead", "trail ", "名前", "ünï/cödé:1", "/", ".", ":", "::", "..", "train", "graph", "forward",
         "initializers", "onnx_initializer_0", "input_1", "Conv", "Conv_0", "a=b", "x,y", "[bold]red[/]", "<b>&amp;",
         "a|b", "onnx_cp_io_0", "onnx_cp_io_1", "{}", "%s", "'q'", '"dq"', "\\", "$x", "#1", "1e5", "-1", "nan"]
ALPHABET = string.ascii_letters + string.digits + "/:._- =,|[]<>&'\"{}%#" + "üé名前Ωж"
NAME = st.one_of(st.sampled_from(KNOWN), st.text(ALPHABET, min_size=1, max_size=10))
# How the OCR recognizer that found the bug names its tensors: a numbered output, a dotted input.
EXPORTED = ({"x": "input.1", "w1": "onnx::Conv_1", "b1": "1", "h1": "/conv1/Conv_output_0", "h2": "12", "w2": "2",
             "b2": "3", "h3": "385", "pooled": "386", "y": "387"},
            {"conv1": "/conv1/Conv", "relu": "Relu_1", "conv2": "Conv_2", "pool": "12", "flatten": "387"}, True)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@st.composite
def naming(draw):
    """Tensor names (unique), node names (unique, perhaps equal to tensor names, one perhaps empty), and
    whether the initializers are listed among the graph inputs too."""
    tensors = draw(st.lists(NAME, min_size=len(TENSORS), max_size=len(TENSORS), unique=True))
    nodes = draw(st.lists(st.one_of(NAME, st.sampled_from(tensors), st.just("")), min_size=len(NODES),
                          max_size=len(NODES), unique=True))
    return dict(zip(TENSORS, tensors)), dict(zip(NODES, nodes)), draw(st.booleans())


def named_model(names) -> onnx.ModelProto:
    t, n, shared = names
    rng = np.random.default_rng(0)
    w1 = cp_kernel(rng, (8, 3, 3, 3), 2)
    w2 = cp_kernel(rng, (CLASSES, 8, 3, 3), 2)
    inits = [numpy_helper.from_array(v, t[k]) for k, v in (
        ("w1", w1), ("b1", rng.standard_normal(8).astype(np.float32)),
        ("w2", w2), ("b2", rng.standard_normal(CLASSES).astype(np.float32)))]
    nodes = [
        helper.make_node("Conv", [t["x"], t["w1"], t["b1"]], [t["h1"]], name=n["conv1"], pads=[1] * 4),
        helper.make_node("Relu", [t["h1"]], [t["h2"]], name=n["relu"]),
        helper.make_node("Conv", [t["h2"], t["w2"], t["b2"]], [t["h3"]], name=n["conv2"], pads=[1] * 4),
        helper.make_node("GlobalAveragePool", [t["h3"]], [t["pooled"]], name=n["pool"]),
        helper.make_node("Flatten", [t["pooled"]], [t["y"]], name=n["flatten"]),
    ]
    inputs = [helper.make_tensor_value_info(t["x"], TensorProto.FLOAT, ["N", *X_SHAPE[1:]])]
    if shared:  # as IR 3 exporters wrote them: each weight also a graph input, the initializer its default
        inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "named", inputs,
                              [helper.make_tensor_value_info(t["y"], TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def cp_kernel(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> np.ndarray:
    """An exact rank-``rank`` CP tensor of ``shape``."""
    factors = [rng.standard_normal((d, rank)) for d in shape]
    return np.einsum("ar,br,cr,dr->abcd", *factors).astype(np.float32)


def samples(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *X_SHAPE[1:])).astype(np.float32)


def invoke(*args) -> str:
    """Run the CLI in this process; return its output after checking it succeeded without a traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    output = result.output
    assert result.exit_code == 0 and result.exception is None, (args, output, result.exception)
    assert "Traceback" not in output and "this is a bug" not in output, output
    return output


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's output in onnxruntime on batch ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_same_interface(got: onnx.ModelProto, original: onnx.ModelProto) -> None:
    onnx.checker.check_model(got, full_check=True)
    runtime = {i.name for i in original.graph.initializer}
    assert [i.name for i in got.graph.input if i.name not in {t.name for t in got.graph.initializer}] == \
        [i.name for i in original.graph.input if i.name not in runtime]
    assert [o.name for o in got.graph.output] == [o.name for o in original.graph.output]


def rewritten(tmp_path, names, *flags) -> tuple:
    """(original path, rewritten path, original model, rewritten model): cp4 at rank 2 on both Convs."""
    model = named_model(names)
    source, out = tmp_path / "model.onnx", tmp_path / "rewritten.onnx"
    onnx.save(model, source)
    invoke("rewrite", source, "--rank", "2", "--realize", "cp4", "--jobs", "1", "-q", "-o", out, *flags)
    return source, out, model, onnx.load(out)


@settings(max_examples=60, **SETTINGS)
@given(names=naming())
@example(names=EXPORTED)
def test_rewrite_keeps_every_name(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("rewrite")
    _, _, model, result = rewritten(folder, names, "--report", folder / "report.json")
    assert_same_interface(result, model)
    report = json.loads((folder / "report.json").read_text())
    convs = [display_name(node, k) for k, node in enumerate(model.graph.node) if node.op_type == "Conv"]
    assert [layer["node"] for layer in report["layers"]] == convs
    assert not any(n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in (names[0]["w1"], names[0]["w2"])
                   for n in result.graph.node), "a Conv was left as it was"
    x = samples(4)
    np.testing.assert_allclose(outputs(result, x), outputs(model, x), rtol=1e-3, atol=1e-3)


@settings(max_examples=50, **SETTINGS)
@given(names=naming())
def test_inspect_lists_every_conv_by_its_name(tmp_path_factory, names):
    path = tmp_path_factory.mktemp("inspect") / "model.onnx"
    model = named_model(names)
    onnx.save(model, path)
    listed = json.loads(invoke("inspect", path, "--json"))
    convs = [display_name(node, k) for k, node in enumerate(model.graph.node) if node.op_type == "Conv"]
    assert [layer["node"] for layer in listed["layers"]] == convs
    assert all(layer["status"] == "eligible" for layer in listed["layers"])
    invoke("inspect", path)  # the table, names drawn as they are


@settings(max_examples=40, **SETTINGS)
@given(names=naming())
def test_evaluate_reads_the_named_output(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("evaluate")
    model = named_model(names)
    onnx.save(model, folder / "model.onnx")
    x = samples(12)
    logits = outputs(model, x)
    y = np.arange(len(x)) % CLASSES
    np.savez(folder / "data.npz", x=x, y=y)
    got = json.loads(invoke("evaluate", folder / "model.onnx", "--data", folder / "data.npz", "--json"))
    assert got["top1"] == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    assert got["count"] == len(x)


@settings(max_examples=30, **SETTINGS)
@given(names=naming())
def test_bench_times_and_profiles_named_models(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("bench")
    source, out, model, _ = rewritten(folder, names)
    shape = f"{names[0]['x']}={'x'.join(map(str, X_SHAPE))}"
    invoke("bench", source, out, "--runs", "2", "--warmup", "0", "--per-node", "--input-shape", shape,
           "--json", folder / "b.json", "--markdown", folder / "b.md", "--html", folder / "b.html")
    report = json.loads((folder / "b.json").read_text())
    assert list(report["inputs"]) == [names[0]["x"]]
    assert [m["label"] for m in report["models"]] == [str(source), str(out)]
    layers = {row["layer"] for c in report["comparisons"] for row in c["layers"]}
    assert {display_name(node, k) for k, node in enumerate(model.graph.node) if node.op_type == "Conv"} <= layers


@settings(max_examples=30, **SETTINGS)
@given(names=naming())
@example(names=EXPORTED)
def test_finetune_exports_the_names_it_was_given(tmp_path_factory, torch_threads, names):
    folder = tmp_path_factory.mktemp("finetune")
    source, out, model, result = rewritten(folder, names)
    x = samples(8)
    np.save(folder / "x.npy", x)
    shape = f"{names[0]['x']}={'x'.join(map(str, X_SHAPE))}"
    # A learning rate this small leaves the weights as they were: the outputs must not move.
    invoke("finetune", out, "--teacher", source, "--data", folder / "x.npy", "--input-shape", shape, "--epochs", "1",
           "--lr", "1e-12", "--batch-size", "4", "-q", "-o", folder / "tuned.onnx")
    tuned = onnx.load(folder / "tuned.onnx")
    assert_same_interface(tuned, model)
    dims = [d.dim_param for v in [*tuned.graph.input, *tuned.graph.output] for d in v.type.tensor_type.shape.dim]
    assert dims[0], "the batch dimension stays dynamic"
    if not any("onnx_cp_io_" in name for name in names[0].values()):  # the exporter's stand-in names stay inside
        assert not any("onnx_cp_io_" in d for d in dims), dims
    assert sorted(n.name for n in tuned.graph.node) == sorted(n.name for n in result.graph.node)
    np.testing.assert_allclose(outputs(tuned, x), outputs(result, x), rtol=1e-4, atol=1e-5)


def test_a_model_torch_cannot_import_is_refused_in_one_line_naming_the_op(tmp_path, torch_threads):
    """'387' (T x N x 4) -> GRU '1' (hidden 3) -> '0': onnx2torch has no GRU converter."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 9, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 9, 3)).astype(np.float32), "R")]
    graph = helper.make_graph([helper.make_node("GRU", ["387", "W", "R"], ["0"], name="1", hidden_size=3)], "gru",
                              [helper.make_tensor_value_info("387", TensorProto.FLOAT, [5, 1, 4])],
                              [helper.make_tensor_value_info("0", TensorProto.FLOAT, [5, 1, 1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "gru.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 5, 1, 4), np.float32))
    result = CliRunner().invoke(cli, ["finetune", str(tmp_path / "gru.onnx"), "--teacher", str(tmp_path / "gru.onnx"),
                                      "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.onnx")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "no converter for GRU (opset 17)" in lines[0] and "onnx-cp rewrite --calib" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


@pytest.fixture(scope="module")
def torch_threads():
    """Fine-tuning tests need torch and onnx2torch (the finetune extra); one thread keeps them quick."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

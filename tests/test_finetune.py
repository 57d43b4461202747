"""Fine-tuning after the rewrite: normalization for onnx2torch, the torch round trip, training,
the missing-extra message, and the ``finetune`` command end to end.

The tiny network (built in torch, exported with the TorchScript exporter, rewritten by onnx-cp):

    x (N x 3 x 8 x 8) -> Conv 3x3 3->8 -> Relu -> Conv 3x3 8->8 -> Relu -> GlobalAveragePool
      -> Flatten -> Gemm 8->3 -> logits
"""
import io
import json
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_cp import OnnxCpError, RewriteConfig, rewrite
from onnx_cp.evaluate import evaluate
from onnx_cp.finetune import (
    finetune,
    finetune_with_report,
    load_image_folder,
    normalize,
    op_counts,
    to_onnx,
    to_torch,
)

torch_only = pytest.mark.torch
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    torch.set_num_threads(2)
    return torch


def export(torch, net, x, **kwargs) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), buffer, dynamo=False, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def models(torch):
    """(original, rewritten) tiny models; the rewrite is cp4 at rank 2 on both 3x3 Convs."""
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    original = export(torch, net, torch.zeros(1, 3, 8, 8), opset_version=17, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    fast = rewrite(original, RewriteConfig(ranks=(2,), realize="cp4", max_iter=50))
    return original, fast


@pytest.fixture(scope="module")
def data():
    """64 labelled 3 x 8 x 8 images: the class is which third of the channels is brightest."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    x[np.arange(64), y] += 1.0
    return x, y.astype(np.int64)


def loader_of(torch, x, y=None, batch_size=16, seed=0):
    tensors = [torch.from_numpy(x)] + ([torch.from_numpy(y)] if y is not None else [])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=batch_size,
                                       shuffle=True, generator=torch.Generator().manual_seed(seed))


@torch_only
def test_normalize_makes_torch_exported_resnet18_convertible(torch):
    torchvision = pytest.importorskip("torchvision")
    import onnx2torch

    torch.manual_seed(0)
    raw = export(torch, torchvision.models.resnet18(weights=None), torch.zeros(1, 3, 64, 64), opset_version=17,
                 input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    producers = {out: n.op_type for n in raw.graph.node for out in n.output}
    assert any(producers.get(i) == "Identity" for n in raw.graph.node if n.op_type == "Conv" for i in n.input[1:]), \
        "torch no longer feeds Conv weights or biases through Identity; this test lost its point"
    with pytest.raises(KeyError):
        onnx2torch.convert(raw)

    clean = normalize(raw)
    assert op_counts(clean)["Identity"] == 0 and op_counts(clean)["Conv"] == op_counts(raw)["Conv"] == 20
    onnx.checker.check_model(clean, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(ort_run(clean, x), ort_run(raw, x), rtol=RTOL, atol=ATOL)
    module = to_torch(raw)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ort_run(raw, x), rtol=1e-3, atol=1e-4)


def test_normalize_turns_constant_nodes_into_initializers():
    # x -> Add(Constant c) -> Identity -> Mul(Identity(w)) -> y
    from onnx import TensorProto, helper, numpy_helper

    c = helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0])
    w = numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "w")
    graph = helper.make_graph(
        [c, helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("Identity", ["s"], ["t"]),
         helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("Mul", ["t", "w2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clean = normalize(model)
    assert [n.op_type for n in clean.graph.node] == ["Add", "Mul"]
    assert sorted(t.name for t in clean.graph.initializer) == ["c", "w2"]
    onnx.checker.check_model(clean, full_check=True)
    x = np.array([1.0, -1.0], np.float32)
    np.testing.assert_array_equal(ort_run(clean, x), ort_run(model, x))


@torch_only
def test_round_trip_keeps_names_structure_and_metadata(torch, models):
    _, fast = models
    module = to_torch(fast)
    with torch.no_grad():  # move every weight, so a stale copy of the input would show
        for p in module.parameters():
            p.mul_(1.1)
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    back = to_onnx(module, fast, example=x[:2])
    onnx.checker.check_model(back, full_check=True)
    assert [n.name for n in back.graph.node] == [n.name for n in fast.graph.node]
    assert op_counts(back) == op_counts(fast)
    assert {p.key: p.value for p in back.metadata_props} == {p.key: p.value for p in fast.metadata_props}
    assert back.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(back, x), expected, rtol=RTOL, atol=ATOL)  # batch 5: dynamic


@torch_only
def test_one_epoch_gives_a_valid_model_that_matches_torch_and_evaluates(torch, models, data):
    original, fast = models
    x, y = data
    steps = []
    result = finetune_with_report(fast, loader_of(torch, x, y), epochs=1, lr=1e-2, teacher=original,
                                  val_loader=loader_of(torch, x, y, batch_size=64), seed=0,
                                  callback=steps.append)
    tuned, report = result.model, result.report
    onnx.checker.check_model(tuned, full_check=True)
    assert report.export_difference <= 1e-4 and report.structure == {} and report.notes == []
    assert op_counts(tuned)["Conv"] == op_counts(fast)["Conv"] == 8
    assert [s.phase for s in steps] == ["train"] * 4 + ["val"] and steps[-1].val_accuracy is not None
    assert report.labelled and report.distilled and report.steps == 4

    # The exported model computes what its own torch conversion computes, and moved off the input.
    module = to_torch(tuned)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(tuned, x), expected, rtol=RTOL, atol=ATOL)
    assert not np.allclose(ort_run(tuned, x), ort_run(fast, x), atol=1e-3)

    acc = evaluate(tuned, x, y)
    assert acc.count == 64 and 0.0 <= acc.top1 <= 1.0
    layers = json.loads(next(p.value for p in tuned.metadata_props if p.key == "onnx_cp"))["layers"]
    names = {n.name for n in tuned.graph.node}
    assert all(set(layer["nodes"]) <= names for layer in layers) and len(layers) == 2


@torch_only
def test_same_seed_gives_the_same_model(torch, models, data):
    _, fast = models
    x, y = data
    runs = [finetune(fast, loader_of(torch, x, y), epochs=1, lr=1e-2, seed=3) for _ in range(2)]
    for a, b in zip(*(r.graph.initializer for r in runs)):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


@torch_only
def test_without_labels_it_distills_and_without_a_teacher_it_refuses(torch, models, data):
    original, fast = models
    x, _ = data
    result = finetune_with_report(fast, loader_of(torch, x), epochs=1, lr=1e-2, teacher=original)
    assert result.report.distilled and not result.report.labelled
    assert result.report.epochs[0].accuracy is None
    with pytest.raises(OnnxCpError, match="no labels and no teacher"):
        finetune(fast, loader_of(torch, x), epochs=1, lr=1e-2)


@pytest.mark.parametrize("missing", ["torch", "onnx2torch"])
def test_a_missing_dependency_names_the_extra(monkeypatch, missing, models_or_none):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    with pytest.raises(OnnxCpError, match=r"pip install 'onnx-cp\[finetune\]'"):
        to_torch(models_or_none)
    with pytest.raises(OnnxCpError, match=r"'finetune' extra"):
        finetune(models_or_none, [], epochs=1, lr=1e-3)


@pytest.fixture
def models_or_none():
    """A tiny model built without torch, so the missing-extra test runs where torch is absent."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_command_without_torch_prints_one_line(monkeypatch, tmp_path, models_or_none, data):
    from onnx_cp.commands.finetune_cmd import finetune_command

    monkeypatch.setitem(sys.modules, "torch", None)
    onnx.save(models_or_none, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=data[0], y=data[1])
    result = CliRunner().invoke(finetune_command, [str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                                                   "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert line.startswith("onnx-cp: error: fine-tuning needs the 'finetune' extra: "
                           "pip install 'onnx-cp[finetune]' (cannot import torch")


@torch_only
def test_the_command_runs_end_to_end_and_writes_atomically(torch, models, data, tmp_path):
    from onnx_cp.commands.finetune_cmd import finetune_command

    original, fast = models
    x, y = data
    for name, model in (("orig.onnx", original), ("fast.onnx", fast)):
        onnx.save(model, tmp_path / name)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=x[:32], y=y[:32])
    out, report = tmp_path / "tuned.onnx", tmp_path / "report.json"
    args = [str(tmp_path / "fast.onnx"), "--data", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
            "--teacher", str(tmp_path / "orig.onnx"), "--epochs", "1", "--batch-size", "16", "--lr", "0.01",
            "-o", str(out), "--report", str(report)]
    result = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "before rewrite (teacher)" in result.output and "after fine-tuning" in result.output
    tuned = onnx.load(out)
    onnx.checker.check_model(tuned, full_check=True)
    assert op_counts(tuned) == op_counts(fast)
    facts = json.loads(report.read_text())
    assert set(facts["accuracy"]) == {"before rewrite (teacher)", "after rewrite (input)", "after fine-tuning"}
    assert facts["accuracy"]["after fine-tuning"]["top1"] == evaluate(out, x[:32], y[:32]).top1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["orig.onnx", "fast.onnx", "train.npz", "val.npz", "tuned.onnx", "report.json"])  # no temp files

    # A run that fails (the loss diverges) leaves the existing output as it was.
    before = out.read_bytes()
    failed = CliRunner().invoke(finetune_command, args[:-2] + ["--lr", "1e30"])
    assert failed.exit_code == 1 and "lower the learning rate" in failed.output
    assert out.read_bytes() == before


def test_image_folder_loads_classes_in_sorted_order(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 7, 3), 100 * k + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    x, y, classes = load_image_folder(tmp_path, (3, 4, 6), mean=(0.5,), std=(0.25,))
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[2], (100 / 255 - 0.5) / 0.25, rtol=1e-5)
    with pytest.raises(OnnxCpError, match=r"class folders \['dog'\] are not among"):
        load_image_folder(tmp_path, (3, 4, 6), classes=["cat"])


@torch_only
def test_a_fixed_batch_model_stays_fixed(torch, data):
    # x (2 x 1 x 6 x 6, fixed) -> Conv 3x3 1->4 -> Flatten -> Gemm 144->3
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(144, 3))
    fixed = export(torch, net, torch.zeros(2, 1, 6, 6), opset_version=17)
    x, y = data[0][:, :1, 1:7, 1:7].copy(), data[1]
    tuned = finetune(fixed, loader_of(torch, x, y), epochs=1, lr=1e-2)
    assert [d.dim_value for d in tuned.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 6, 6]
    assert evaluate(tuned, x, y).count == 64


@torch_only
def test_the_package_itself_is_the_finetune_function(torch, models, data):
    import onnx_cp

    _, fast = models
    x, y = data
    tuned = onnx_cp.finetune(fast, loader_of(torch, x, y), epochs=1, lr=1e-3, seed=0)
    onnx.checker.check_model(tuned, full_check=True)
    assert onnx_cp.finetune.finetune_with_report is onnx_cp.finetune_with_report
    assert ort_run(tuned, x[:4]).shape == (4, 3)


@torch_only
def test_distillation_that_ends_farther_from_the_teacher_says_so(torch, models, data):
    """Without labels, an output whose distillation loss rose is named in a note; a run that
    brought the student closer gives no such note."""
    original, fast = models
    x, _ = data
    good = finetune_with_report(fast, loader_of(torch, x), epochs=2, lr=1e-3, teacher=original).report
    assert all(o.after < o.before for o in good.outputs)
    assert not any("farther from the teacher" in n for n in good.notes)
    bad = finetune_with_report(fast, loader_of(torch, x), epochs=2, lr=3.0, teacher=original).report
    assert any(o.after > o.before for o in bad.outputs)
    assert any("'logits' farther from the teacher" in n and "--lr" in n for n in bad.notes)


class _Repeated:
    """The same batches each epoch, but not a list: the teacher runs on every step."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@torch_only
def test_a_list_of_batches_runs_the_teacher_once_per_batch_and_trains_the_same(torch, models, data, monkeypatch):
    from onnx_cp.finetune import teacher as teacher_module

    original, fast = models
    x, _ = data
    batches = [x[i:i + 16] for i in range(0, len(x), 16)]
    calls = []
    real = teacher_module.output_list
    monkeypatch.setattr(teacher_module, "output_list", lambda *a: calls.append(1) or real(*a))
    runs = {}
    for name, loader in (("list", batches), ("iterable", _Repeated(batches))):
        calls.clear()
        runs[name] = (finetune(fast, loader, epochs=3, lr=1e-2, teacher=original), len(calls))
    # the teacher's forward passes: every epoch's batches without the cache, the first epoch's with it
    assert runs["iterable"][1] - runs["list"][1] == 2 * len(batches), runs
    for a, b in zip(runs["list"][0].graph.initializer, runs["iterable"][0].graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))

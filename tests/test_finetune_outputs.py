"""Label-free distillation of any outputs: the loss of each output (KL along a class axis, given or
read from the shape, or normalized MSE), sequence logits of a CRNN with an LSTM, a model with a
classifier and a regression head, unlabelled image folders, and the refusal of models onnx2torch
cannot import.

The two-head network (built in torch, exported with the TorchScript exporter):

    x (N x 3 x 8 x 8) -> Conv 3x3 3->8 -> Relu -> GlobalAveragePool -> Flatten -> feature (N, 8)
      feature -> Gemm 8->3 -> logits (N, 3)
      feature -> Gemm 8->4 -> boxes (N, 4)
"""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from builders import run
from onnx_cp import OnnxCpError
from onnx_cp.finetune.distill import OutputLoss, parse_class_axes, plan_losses

T = 4.0


def test_each_output_gets_its_loss_by_the_shape_rule():
    shapes = [("logits", (2, 10)), ("seq", (25, 2, 37)), ("score", (2, 1)), ("mask", (2, 1, 8, 8)), ("v", (2,))]
    plan = plan_losses(shapes, {})
    assert [p.label for p in plan] == ["kl(axis=1)", "kl(axis=2)", "mse", "mse", "mse"]
    assert plan[1].rule == "3-D (T, N, C): classes on the last axis"


def test_the_class_axis_option_overrides_the_rule_per_output_or_for_all():
    shapes = [("logits", (2, 10)), ("boxes", (2, 100, 4)), ("prob", (2, 5, 7, 7))]
    assert parse_class_axes(["boxes=mse", "prob=1"]) == {"boxes": None, "prob": 1}
    plan = plan_losses(shapes, parse_class_axes(["boxes=mse", "prob=1"]))
    assert [p.label for p in plan] == ["kl(axis=1)", "mse", "kl(axis=1)"]
    assert [p.rule for p in plan][1:] == ["class_axes", "class_axes"]
    assert [p.label for p in plan_losses(shapes, parse_class_axes(["mse", "logits=-1"]))] == ["kl(axis=1)", "mse", "mse"]

    with pytest.raises(OnnxCpError, match=r"class_axes names \['box'\], but the distilled outputs are"):
        plan_losses(shapes, {"box": None})
    with pytest.raises(OnnxCpError, match=r"output 'logits' has 2 axes \(2, 10\); give an axis in -2..1"):
        plan_losses(shapes, {"logits": 2})
    with pytest.raises(OnnxCpError, match=r"output 'score' \(2, 1\) has size 1 there, no classes to compare"):
        plan_losses([("score", (2, 1))], {"score": 1})
    with pytest.raises(OnnxCpError, match=r"give \[OUTPUT=\]AXIS"):
        parse_class_axes(["logits=last"])


def test_the_losses_are_todays_kl_for_classifiers_and_scale_free_mse():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    from onnx_cp.finetune.distill import output_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    kl = OutputLoss("y", "kl", 1, "")
    todays = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T * T
    torch.testing.assert_close(output_loss(kl, s, t, T), todays, rtol=1e-6, atol=1e-7)
    # Softmax outputs: their logarithm stands for the logits, so the loss is the same.
    probs = OutputLoss("y", "kl", 1, "", teacher_probabilities=True, student_probabilities=True)
    torch.testing.assert_close(output_loss(probs, s.softmax(1), t.softmax(1), T), todays, rtol=1e-5, atol=1e-6)
    # Along another axis: the same loss as on the moved tensor, averaged over the other positions.
    seq = OutputLoss("y", "kl", 0, "")
    torch.testing.assert_close(output_loss(seq, s, t, T), output_loss(kl, s.T, t.T, T), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(output_loss(OutputLoss("y", "kl", 2, ""), s[None].expand(3, 6, 5), t[None].expand(3, 6, 5), T),
                               todays, rtol=1e-6, atol=1e-7)

    mse = OutputLoss("y", "mse", None, "")
    assert float(output_loss(mse, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]), T)) == pytest.approx(0.25)
    assert float(output_loss(mse, 1000 * s, 1000 * t, T)) == pytest.approx(float(output_loss(mse, s, t, T)), rel=1e-5)


@pytest.fixture(scope="module")
def torch():
    pytest.importorskip("onnx2torch")
    return pytest.importorskip("torch")


def teacher_and_student(torch, net, export, noise=0.3, seed=0):
    """(teacher, student): ``net`` exported, then exported again with every weight moved by noise."""
    teacher = export(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return teacher, export(net)


def loader_of(torch, x, batch_size=16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=batch_size,
                                       shuffle=True, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def crnns(torch):
    from test_lstm_converter import CRNN, export_onnx

    torch.manual_seed(0)
    return teacher_and_student(torch, CRNN(), lambda net: export_onnx(net, torch.zeros(2, 1, 8, 16)))


@pytest.mark.torch
def test_a_crnn_learns_its_teachers_sequence_logits_from_unlabelled_inputs(torch, crnns):
    from onnx_cp.finetune import finetune_with_report, op_counts

    teacher, student = crnns
    x = np.random.default_rng(0).standard_normal((48, 1, 8, 16)).astype(np.float32)
    result = finetune_with_report(student, loader_of(torch, x), epochs=3, lr=3e-2, teacher=teacher, seed=0)
    report, tuned = result.report, result.model
    assert report.distilled and not report.labelled
    out, = report.outputs
    assert (out.name, out.loss, out.rule) == ("logits", "kl(axis=2)", "3-D (T, N, C): classes on the last axis")
    assert out.after < 0.6 * out.before, (out.before, out.after)  # 0.046 -> 0.024
    per_epoch = [e.distillation["logits"] for e in report.epochs]
    assert per_epoch[-1] < per_epoch[0] and per_epoch[0] == pytest.approx(report.epochs[0].loss)

    onnx.checker.check_model(tuned, full_check=True)
    assert op_counts(tuned)["LSTM"] == op_counts(tuned)["Conv"] / 2 == 1
    assert run(tuned, {"x": x[:5]})[0].shape == (8, 5, 7)  # T x N x C, batch dynamic
    assert report.export_difference <= 1e-4
    assert json.loads(next(p.value for p in tuned.metadata_props if p.key == "onnx_cp_finetune"))[
        "distill_losses"] == {"logits": "kl(axis=2)"}


@pytest.fixture(scope="module")
def two_heads(torch):
    from test_lstm_converter import export_onnx

    nn = torch.nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classify, self.regress = nn.Linear(8, 3), nn.Linear(8, 4)

        def forward(self, x):
            feature = self.trunk(x)
            return self.classify(feature), self.regress(feature)

    torch.manual_seed(0)
    return teacher_and_student(torch, TwoHeads(), lambda net: export_onnx(
        net, torch.zeros(2, 3, 8, 8), ("logits", "boxes"), {"x": {0: "n"}, "logits": {0: "n"}, "boxes": {0: "n"}}))


@pytest.mark.torch
def test_a_classifier_head_and_a_regression_head_are_both_distilled(torch, two_heads):
    from onnx_cp.finetune import finetune_with_report

    teacher, student = two_heads
    x = np.random.default_rng(1).standard_normal((48, 3, 8, 8)).astype(np.float32)
    result = finetune_with_report(student, loader_of(torch, x), epochs=3, lr=1e-2, teacher=teacher, seed=0,
                                  class_axes={"boxes": None})
    report = result.report
    assert [(o.name, o.loss, o.rule) for o in report.outputs] == [
        ("logits", "kl(axis=1)", "2-D (N, C): classes on axis 1"), ("boxes", "mse", "class_axes")]
    for out in report.outputs:
        assert out.after < 0.7 * out.before, (out.name, out.before, out.after)
    logits, boxes = run(result.model, {"x": x[:4]})
    assert logits.shape == (4, 3) and boxes.shape == (4, 4)
    assert report.export_difference <= 1e-4  # both outputs compared


@pytest.mark.torch
def test_the_command_distils_a_crnn_from_a_folder_of_unlabelled_images(torch, crnns, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from onnx_cp.commands.finetune_cmd import finetune_command

    teacher, student = crnns
    onnx.save(teacher, tmp_path / "teacher.onnx")
    onnx.save(student, tmp_path / "student.onnx")
    images = tmp_path / "lines"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 16), dtype=np.uint8)).save(images / f"{k}.png")
    out, report = tmp_path / "tuned.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(finetune_command, [
        str(tmp_path / "student.onnx"), "--teacher", str(tmp_path / "teacher.onnx"), "--data", str(images),
        "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--class-axis", "logits=-1", "--mean", "0.5",
        "--std", "0.25", "-o", str(out), "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "distillation on the first batch" in result.output and "kl(axis=2)" in result.output
    facts = json.loads(report.read_text())["report"]
    assert facts["labelled"] is False and facts["distilled"] is True
    assert [(o["name"], o["loss"], o["rule"]) for o in facts["outputs"]] == [("logits", "kl(axis=2)", "--class-axis")]
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_the_command_refuses_a_model_it_cannot_import_before_reading_any_data(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from onnx_cp.commands.finetune_cmd import finetune_command

    # x -> Conv 1x1 -> com.example.Frobnicate -> y
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Frobnicate", ["a"], ["y"], domain="com.example")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "m.onnx")
    result = CliRunner().invoke(finetune_command, [str(tmp_path / "m.onnx"), "--data", str(tmp_path / "missing.npz"),
                                                   "--teacher", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2
    line, = result.output.strip().splitlines()
    assert line.startswith(f"onnx-cp: error: fine-tuning cannot import {tmp_path / 'm.onnx'}: onnx2torch ")
    assert line.endswith("has no converter for Frobnicate (domain com.example, version 1); "
                         "use `onnx-cp rewrite --calib DATA`, which needs no import")
    assert not (tmp_path / "o.onnx").exists()


def rank_hiding_model() -> onnx.ModelProto:
    """A Reshape to a shape computed at run time (as PP-OCR's recognizers have), then BatchNormalization:

        x (n x 4 x 3 x 3) -> Shape -> s;  e = int(sqrt(float(s[1]))^2) = 4;  k = s[0:e]
        Reshape(x, k) -> BatchNormalization -> y
    Shape inference cannot tell the Reshape's rank (it does not evaluate Sqrt), which onnx2torch's
    BatchNormalization converter needs.
    """
    def ints(name, v):
        return onnx.numpy_helper.from_array(np.array(v, np.int64), name)

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["g"]),
             helper.make_node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT), helper.make_node("Sqrt", ["gf"], ["q"]),
             helper.make_node("Mul", ["q", "q"], ["qq"]), helper.make_node("Cast", ["qq"], ["e"], to=TensorProto.INT64),
             helper.make_node("Slice", ["s", "zero", "e"], ["k"]), helper.make_node("Reshape", ["x", "k"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["y"])]
    stats = [onnx.numpy_helper.from_array(np.full(4, v, np.float32), n)
             for n, v in (("scale", 2.0), ("bias", 0.5), ("mean", 0.1), ("var", 4.0))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 3, 3])],
                              [ints("one", [1]), ints("zero", [0])] + stats)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # onnx2torch's Slice
def test_an_example_batch_tells_the_ranks_shape_inference_cannot(torch):
    from onnx_cp.finetune import to_torch

    model = rank_hiding_model()
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    with pytest.raises(OnnxCpError, match="BatchNorm operation with spatial rank == -2"):
        to_torch(model)
    module = to_torch(model, example=x)
    x3 = np.random.default_rng(1).standard_normal((3, 4, 3, 3)).astype(np.float32)  # another batch size
    with torch.no_grad():
        got = module(torch.from_numpy(x3)).numpy()
    np.testing.assert_allclose(got, run(model, {"x": x3})[0], rtol=1e-5, atol=1e-6)

"""onnx_cp.evaluate and ``onnx-cp evaluate``: exact accuracies on hand-made logits, data errors,
and the shipped MNIST model's real accuracy. No network, no torch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_cp.commands.evaluate_cmd import evaluate_command
from onnx_cp.errors import OnnxCpError
from onnx_cp.evaluate import Accuracy, evaluate, load_dataset, predict

MODELS = Path(__file__).resolve().parent.parent / "models"


def flatten_model(classes: int, batch: int | str = "N") -> onnx.ModelProto:
    """input [batch, 1, 1, classes] -> Flatten -> logits [batch, classes]: the pixels are the logits."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"], axis=1)],
        "flatten",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 1, classes])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


# 6 classes, so top-5 means "at most 4 other classes score >= the label's logit"
LOGITS = np.array(
    [
        [0, 1, 2, 3, 4, 5],  # label 5: top-1 and top-5
        [0, 1, 2, 3, 4, 5],  # label 1: 4 classes ahead -> top-5 only
        [0, 1, 2, 3, 4, 5],  # label 0: 5 classes ahead -> neither
        [1, 1, 1, 1, 1, 1],  # label 2: ties count against the label -> neither
        [9, 0, 0, 0, 0, 0],  # label 0: top-1 and top-5
    ],
    dtype=np.float32,
)
LABELS = np.array([5, 1, 0, 2, 0])
X = LOGITS[:, None, None, :]  # N x 1 x 1 x 6


def test_evaluate_counts_top1_and_top5_exactly():
    assert evaluate(flatten_model(6), X, LABELS) == Accuracy(top1=2 / 5, top5=3 / 5, count=5)


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_batch_size_does_not_change_the_result(batch_size):
    assert evaluate(flatten_model(6), X, LABELS, batch_size=batch_size, threads=1).top5 == 3 / 5


@pytest.mark.parametrize("fixed_batch", [1, 3])
def test_model_with_fixed_batch_runs_in_batches_of_that_size(fixed_batch):
    # 5 samples through a batch-3 model: the last batch is padded, the padding dropped
    model = flatten_model(6, batch=fixed_batch)
    np.testing.assert_array_equal(predict(model, X, batch_size=256), LOGITS)
    assert evaluate(model, X, LABELS) == Accuracy(top1=2 / 5, top5=3 / 5, count=5)


def test_model_given_as_path(tmp_path):
    path = tmp_path / "flatten.onnx"
    onnx.save(flatten_model(6), str(path))
    assert evaluate(path, X, LABELS).top1 == 2 / 5


def test_top5_with_fewer_than_five_classes_uses_all_classes():
    x = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.float32)[:, None, None, :]
    assert evaluate(flatten_model(3), x, np.array([2, 2])) == Accuracy(top1=0.5, top5=1.0, count=2)


def test_nan_logits_are_wrong():
    x = np.full((1, 1, 1, 6), np.nan, dtype=np.float32)
    assert evaluate(flatten_model(6), x, np.array([0])) == Accuracy(top1=0.0, top5=0.0, count=1)


def test_labels_beyond_the_model_classes_are_refused():
    with pytest.raises(OnnxCpError, match=r"labels range 0\.\.6 .* 6 classes"):
        evaluate(flatten_model(6), X, np.array([0, 0, 0, 0, 6]))


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(OnnxCpError, match=r"shape Nx1x1x6 but the images are 5x1x6x1"):
        evaluate(flatten_model(6), X.transpose(0, 1, 3, 2), LABELS)


def test_missing_model_file_is_refused(tmp_path):
    with pytest.raises(OnnxCpError, match="no such file"):
        evaluate(tmp_path / "nope.onnx", X, LABELS)


# --- load_dataset -----------------------------------------------------------------------------


def test_load_dataset_reads_npz_and_npy(tmp_path):
    np.savez(tmp_path / "d.npz", x=X.astype(np.float64), y=LABELS.astype(np.int32))
    x, y = load_dataset(tmp_path / "d.npz")
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, LABELS)
    np.save(tmp_path / "d.npy", X)
    x, y = load_dataset(tmp_path / "d.npy")
    assert y is None and x.shape == X.shape


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": X, "y": LABELS}, r"no array 'x' \(it holds \['images', 'y'\]\)"),
        ({"x": LOGITS, "y": LABELS}, r"x has shape 5x6; expected N x C x H x W"),
        ({"x": X, "y": LABELS[:4]}, r"y has shape 4 but x holds 5 images"),
        ({"x": X, "y": LABELS.astype(np.float32)}, r"y has dtype float32; labels must be integer"),
        ({"x": (X * 255).astype(np.uint8), "y": LABELS}, r"x has dtype uint8"),
    ],
    ids=["missing-x", "wrong-ndim", "length-mismatch", "float-labels", "integer-pixels"],
)
def test_load_dataset_names_file_and_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(OnnxCpError, match=message) as info:
        load_dataset(path)
    assert str(info.value).startswith(str(path))


def test_load_dataset_missing_file(tmp_path):
    with pytest.raises(OnnxCpError, match=r"missing\.npz: no such file; pass an \.npz"):
        load_dataset(tmp_path / "missing.npz")


def test_load_dataset_unreadable_file(tmp_path):
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(OnnxCpError, match=r"junk\.npz: not a readable numpy \.npz file"):
        load_dataset(tmp_path / "junk.npz")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_prints_accuracy_line_and_json(tmp_path):
    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(flatten_model(6), str(model))
    np.savez(data, x=X, y=LABELS)
    result = CliRunner().invoke(evaluate_command, [str(model), "--data", str(data), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{model}: top-1 40.00%  top-5 60.00%  (5 images)"
    result = CliRunner().invoke(evaluate_command, [str(model), "--data", str(data), "--json"])
    assert json.loads(result.output) == {
        "model": str(model), "data": str(data), "top1": 0.4, "top5": 0.6, "count": 5,
    }


def test_cli_refuses_data_without_labels(tmp_path):
    model, data = tmp_path / "m.onnx", tmp_path / "x.npy"
    onnx.save(flatten_model(6), str(model))
    np.save(data, X)
    result = CliRunner().invoke(evaluate_command, [str(model), "--data", str(data)])
    assert result.exit_code == 1
    assert result.output.startswith("onnx-cp: error:") and "holds no labels" in result.output


# --- the shipped model ------------------------------------------------------------------------


def test_shipped_mnist_model_is_accurate():
    x, y = load_dataset(MODELS / "mnist_test.npz")
    assert x.shape == (10000, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0
    acc = evaluate(MODELS / "mnist_cnn.onnx", x, y)
    assert acc.count == 10000
    assert acc.top1 >= 0.98, acc

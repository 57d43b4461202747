"""onnx_cp.accuracy: the data file, the seeded split, the metrics (built-in and the user's), the
allowed drop, and the scorer, judged by onnxruntime on tiny models built here and on the shipped
MNIST and CRNN models. Every refusal is one line."""
from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cp.accuracy import (
    MIN_PART, Drop, build_scorer, drop_from_percent, load_data, output_batches, resolve_metric, split_data, subset,
)
from onnx_cp.errors import OnnxCpError, cli_text
from onnx_cp.evaluate import evaluate, predict

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


def tiny_model(nodes, x_shape, out_shape, initializers=()) -> onnx.ModelProto:
    """One graph: input ``x`` of ``x_shape`` -> ``nodes`` -> output ``out``."""
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def logits_model(classes: int, bias: np.ndarray | None = None) -> onnx.ModelProto:
    """x [N, classes] (+ bias) -> out [N, classes]: the inputs are the logits."""
    bias = np.zeros(classes, np.float32) if bias is None else bias.astype(np.float32)
    return tiny_model([helper.make_node("Add", ["x", "b"], ["out"])], ["N", classes], ["N", classes], [("b", bias)])


def sequence_model(steps: int, classes: int, *, time_major: bool, bias: np.ndarray | None = None,
                   batch: int | str = "N") -> onnx.ModelProto:
    """x [N, T, C] (+ bias) -> out [T, N, C] (time-major, as a CTC head) or [N, T, C]."""
    bias = np.zeros((steps, classes), np.float32) if bias is None else bias.astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "b"], ["sum"])]
    if time_major:
        nodes.append(helper.make_node("Transpose", ["sum"], ["out"], perm=[1, 0, 2]))
        out_shape = [steps, batch, classes]
    else:
        nodes.append(helper.make_node("Identity", ["sum"], ["out"]))
        out_shape = [batch, steps, classes]
    return tiny_model(nodes, [batch, steps, classes], out_shape, [("b", bias)])


def one_line(info) -> str:
    """The refusal's text, checked to be one line for the API and for the CLI."""
    text = str(info.value)
    assert "\n" not in text and "\n" not in cli_text(info.value)
    return text


# --- load_data ---------------------------------------------------------------------------------


def test_npz_arrays_are_kept_by_key_with_x_and_y_cast(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 6, 7).astype(np.int32)
    texts = np.array([f"line{i}" for i in range(7)])
    np.savez(tmp_path / "d.npz", x=x, y=y, texts=texts, charset=np.array("abc"))
    data = load_data(tmp_path / "d.npz", logits_model(6))
    assert sorted(data) == ["charset", "texts", "x", "y"]
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int64
    np.testing.assert_array_equal(data["x"], x.astype(np.float32))
    np.testing.assert_array_equal(data["texts"], texts)
    assert str(data["charset"]) == "abc"


def test_npy_holds_inputs_only_and_mappings_are_checked_alike(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    assert list(load_data(tmp_path / "d.npy", logits_model(6))) == ["x"]
    with pytest.raises(OnnxCpError, match="NaN or Inf"):
        load_data({"x": np.full((2, 6), np.inf)}, logits_model(6))


def test_dynamic_dims_take_any_size_unless_input_shapes_fix_them():
    model = tiny_model([helper.make_node("Identity", ["x"], ["out"])], ["N", 3, "W"], ["N", 3, "W"])
    x = np.zeros((4, 3, 17), np.float32)
    assert load_data({"x": x}, model)["x"].shape == (4, 3, 17)
    with pytest.raises(OnnxCpError) as info:
        load_data({"x": x}, model, {"x": (1, 3, 20)})
    assert "takes N x 3x20" in one_line(info) and "--input-shape x" in cli_text(info.value)


@pytest.mark.parametrize("arrays, message", [
    ({"inputs": np.zeros((3, 6))}, r"no array 'x' \(it holds inputs\)"),
    ({"x": np.zeros((3, 5))}, r"samples of shape 5, but the model's input 'x' takes N x 6"),
    ({"x": np.zeros((3, 6), np.uint8)}, r"x holds uint8, .* store x as floats scaled"),
    ({"x": np.full((3, 6), np.nan)}, r"3 sample\(s\) of x hold NaN or Inf \(the first is sample 0\)"),
    ({"x": np.zeros((0, 6))}, r"x holds no samples"),
    ({"x": np.zeros((3, 6)), "y": np.zeros(2, np.int64)}, r"y has shape 2 but x holds 3 samples"),
    ({"x": np.zeros((3, 6)), "y": np.zeros(3)}, r"y holds float64; labels are integer class indices"),
    ({"x": np.zeros((3, 6)), "y": np.array([0, -1, 2])}, r"y holds class -1"),
], ids=["no-x", "shape", "integer-x", "nan", "empty", "y-length", "y-float", "y-negative"])
def test_bad_data_is_refused_in_one_line_naming_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(OnnxCpError, match=message) as info:
        load_data(path, logits_model(6))
    assert info.value.usage and one_line(info).startswith(f"data='{path}'")
    assert cli_text(info.value).startswith(f"--data {path}")


def test_unreadable_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.npz").write_text("not numpy")
    (tmp_path / "d.txt").write_text("1 2 3")
    np.savez(tmp_path / "objects.npz", x=np.zeros((2, 6)), texts=np.array(["a", None], dtype=object))
    for name, message in [("junk.npz", "not a readable numpy .npz file"), ("d.txt", "unsupported file type '.txt'"),
                          ("objects.npz", "it holds Python objects"), ("missing.npz", "no such file or folder")]:
        with pytest.raises(OnnxCpError) as info:
            load_data(tmp_path / name, logits_model(6))
        assert message in one_line(info) and info.value.usage


def _image_folder(root: Path, layout: dict[str, list[tuple[int, int, int]]]) -> None:
    from PIL import Image

    for folder, colors in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, color in enumerate(colors):
            Image.new("RGB", (10, 6), color).save(root / folder / f"{i}.png")


def pooled_model(channels: int) -> onnx.ModelProto:
    """x [N, C, 4, 5] -> mean over the pixels -> out [N, C]: the brightest channel wins."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["out"])]
    return tiny_model(nodes, ["N", channels, 4, 5], ["N", channels])


def test_image_folder_labels_are_the_sorted_class_subfolders(tmp_path):
    # "ant" is class 0 (red images), "cat" 1 (green), "dog" 2 (blue); one cat image is blue
    _image_folder(tmp_path, {"dog": [(0, 0, 200)], "ant": [(255, 10, 0), (200, 0, 0)],
                             "cat": [(0, 180, 0), (0, 0, 90)], ".hidden": []})
    data = load_data(tmp_path, pooled_model(3))
    np.testing.assert_array_equal(data["y"], [0, 0, 1, 1, 2])
    assert data["x"].shape == (5, 3, 4, 5)
    np.testing.assert_allclose(data["x"][0, :, 0, 0], np.array([255, 10, 0]) / 255, atol=1e-6)  # resized, scaled
    scorer = build_scorer(pooled_model(3), resolve_metric(None, data), data)
    assert scorer.metric.name == "top1" and scorer.original == pytest.approx(4 / 5)


def test_image_folder_without_subfolders_is_unlabelled_and_grey_for_one_channel(tmp_path):
    from PIL import Image

    for i, level in enumerate((30, 200)):
        Image.new("L", (7, 3), level).save(tmp_path / f"{i}.png")
    data = load_data(tmp_path, pooled_model(1))
    assert list(data) == ["x"] and data["x"].shape == (2, 1, 4, 5)
    np.testing.assert_allclose(data["x"][:, 0, 2, 3], [30 / 255, 200 / 255], atol=1e-6)
    assert resolve_metric(None, data).name == "agreement"


def test_image_folder_refusals(tmp_path):
    _image_folder(tmp_path / "mixed", {"a": [(1, 2, 3)], ".": [(4, 5, 6)]})
    (tmp_path / "empty").mkdir()
    for folder, model, message in [("mixed", pooled_model(3), "lie beside the class subfolders"),
                                   ("empty", pooled_model(3), "no images"),
                                   ("mixed", logits_model(6), "images need an input of shape N x C x H x W")]:
        with pytest.raises(OnnxCpError) as info:
            load_data(tmp_path / folder, model)
        assert message in one_line(info)


# --- split_data ----------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_restricts_every_per_sample_array():
    rng = np.random.default_rng(2)
    data = {"x": rng.standard_normal((100, 6)).astype(np.float32), "texts": np.array([str(i) for i in range(100)]),
            "charset": np.array("0123"), "classes": np.array(["a", "b", "c"])}
    parts = split_data(data, holdout=0.3, seed=5)
    assert len(parts.holdout_rows) == 30 and len(parts.selection_rows) == 70
    assert set(parts.holdout_rows).isdisjoint(parts.selection_rows)
    assert sorted(np.concatenate([parts.holdout_rows, parts.selection_rows])) == list(range(100))
    np.testing.assert_array_equal(parts.holdout["x"], data["x"][parts.holdout_rows])
    np.testing.assert_array_equal(parts.selection["texts"], data["texts"][parts.selection_rows])
    assert parts.holdout["charset"] is data["charset"] and parts.holdout["classes"] is data["classes"]
    np.testing.assert_array_equal(split_data(data, 0.3, seed=5).holdout_rows, parts.holdout_rows)
    assert not np.array_equal(split_data(data, 0.3, seed=6).holdout_rows, parts.holdout_rows)


@pytest.mark.parametrize("holdout", [0.3, 0.5, 0.1])
def test_split_refuses_parts_under_the_minimum_and_names_the_count_that_suffices(holdout):
    data = {"x": np.zeros((2 * MIN_PART - 1, 6), np.float32)}  # one part is short, whatever the holdout
    with pytest.raises(OnnxCpError) as info:
        split_data(data, holdout)
    text = one_line(info)
    assert info.value.usage and f"at least {MIN_PART}" in text and f"--holdout {holdout}" in cli_text(info.value)
    fewest = int(re.search(r"pass at least (\d+) samples", text).group(1))
    parts = split_data({"x": np.zeros((fewest, 6), np.float32)}, holdout)
    assert min(len(parts.holdout_rows), len(parts.selection_rows)) >= MIN_PART
    with pytest.raises(OnnxCpError):
        split_data({"x": np.zeros((fewest - 1, 6), np.float32)}, holdout)


@pytest.mark.parametrize("holdout", [0, 1, 1.5, -0.2, "0.3", True])
def test_holdout_outside_zero_one_is_refused(holdout):
    with pytest.raises(OnnxCpError, match="share of samples held back") as info:
        split_data({"x": np.zeros((100, 6), np.float32)}, holdout)
    one_line(info)


# --- built-in metrics ----------------------------------------------------------------------------


def _expected_top_k(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    hits = [np.sum(np.delete(row, label) >= row[label]) < k for row, label in zip(logits, y)]
    return float(np.mean(hits))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_top1_and_top5_count_ties_against_the_label(batch_size):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (50, 8)).astype(np.float32)  # small integers: many ties
    y = rng.integers(0, 8, 50)
    data = {"x": x, "y": y}
    for name, k in (("top1", 1), ("top5", 5)):
        scorer = build_scorer(logits_model(8), resolve_metric(name, data), data, batch_size=batch_size)
        assert scorer.original == pytest.approx(_expected_top_k(x, y, k))
        shifted = logits_model(8, bias=np.arange(8) * 0.5)
        assert scorer.score(shifted) == pytest.approx(_expected_top_k(x + np.arange(8) * 0.5, y, k))


def test_labels_that_do_not_fit_the_outputs_are_refused():
    data = {"x": np.zeros((4, 36), np.float32), "y": np.array([0, 40, 3, 1])}
    with pytest.raises(OnnxCpError) as info:
        build_scorer(logits_model(36), resolve_metric("top1", data), data)
    assert "y holds class 40 but the model's first output has 36 classes" in one_line(info) and info.value.usage
    seq = {"x": np.zeros((4, 5, 3), np.float32), "y": np.zeros(4, np.int64)}
    with pytest.raises(OnnxCpError) as info:
        build_scorer(sequence_model(5, 3, time_major=True), resolve_metric("top5", seq), seq)
    assert "gives 5 positions per sample" in one_line(info)


def test_top_k_needs_labels_and_the_default_follows_them():
    unlabelled = {"x": np.zeros((4, 6), np.float32), "texts": np.array(list("abcd"))}
    with pytest.raises(OnnxCpError) as info:
        resolve_metric("top5", unlabelled)
    assert "needs labels, and the data has none (it holds texts, x)" in one_line(info)
    assert "--metric agreement" in cli_text(info.value)
    assert resolve_metric(None, unlabelled).name == "agreement"
    assert resolve_metric(None, {**unlabelled, "y": np.zeros(4, np.int64)}).name == "top1"


@pytest.mark.parametrize("time_major", [True, False])
def test_agreement_counts_positions_of_sequence_outputs(time_major):
    rng = np.random.default_rng(4)
    steps, classes = 9, 5
    x = rng.standard_normal((45, steps, classes)).astype(np.float32)
    bias = rng.normal(0, 0.7, (steps, classes))
    data = {"x": x}
    scorer = build_scorer(sequence_model(steps, classes, time_major=time_major), resolve_metric(None, data), data)
    assert scorer.original == 1.0 and scorer.reference.shape == (45, steps)
    expected = np.mean((x + bias).argmax(-1) == x.argmax(-1))
    assert 0 < expected < 1
    assert scorer.score(sequence_model(steps, classes, time_major=time_major, bias=bias)) == pytest.approx(expected)


def test_batch_axis_is_found_when_steps_equal_the_batch():
    # T == batch size == 8: the (T, N, C) output has two axes of size 8; a one-sample run tells them apart
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 8, 3)).astype(np.float32)
    got = np.concatenate([out for _, out in output_batches(sequence_model(8, 3, time_major=True), x, batch_size=8)])
    np.testing.assert_array_equal(got, x)
    bias = rng.normal(0, 0.7, (8, 3))
    data = {"x": x}
    scorer = build_scorer(sequence_model(8, 3, time_major=True), resolve_metric("agreement", data), data, batch_size=8)
    expected = np.mean((x + bias).argmax(-1) == x.argmax(-1))
    assert scorer.score(sequence_model(8, 3, time_major=True, bias=bias)) == pytest.approx(expected)


def test_fixed_batch_of_one_runs_sample_by_sample():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    model = sequence_model(4, 3, time_major=True, batch=1)  # out [T, 1, C], as ddddocr's
    got = np.concatenate([out for _, out in output_batches(model, x)])
    np.testing.assert_array_equal(got, x)


def test_agreement_of_class_maps_and_nan_outputs():
    # x [N, C, H, W] -> out: per-pixel classes on axis 1; a NaN pixel agrees with nothing
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    identity = tiny_model([helper.make_node("Identity", ["x"], ["out"])], ["N", 4, 3, 3], ["N", 4, 3, 3])
    data = {"x": x}
    scorer = build_scorer(identity, resolve_metric("agreement", data), data)
    bias = np.zeros((1, 4, 3, 3), np.float32)
    bias[0, 2, 1, 1] = np.nan
    bias[0, 1] = 1.0
    nan_model = tiny_model([helper.make_node("Add", ["x", "b"], ["out"])], ["N", 4, 3, 3], ["N", 4, 3, 3],
                           [("b", bias)])
    same = (x + np.nan_to_num(bias)).argmax(1) == x.argmax(1)
    same[:, 1, 1] = False
    assert scorer.score(nan_model) == pytest.approx(same.mean())


# --- a user's metric -----------------------------------------------------------------------------

_names = itertools.count()


def user_module(tmp_path: Path, monkeypatch, body: str) -> str:
    """A module written in the working directory (tmp_path); its unique name."""
    name = f"user_metric_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    return name


def test_module_function_gets_the_model_path_and_the_part_arrays(tmp_path, monkeypatch):
    name = user_module(tmp_path, monkeypatch, (
        "import onnx\n"
        "def score(model_path, data):\n"
        "    nodes = len(onnx.load(model_path).graph.node)\n"
        "    return float(data['x'].sum()) + 1000 * nodes + 10 ** 6 * len(data['texts'])\n"))
    before = list(sys.path)
    rng = np.random.default_rng(8)
    data = {"x": rng.standard_normal((60, 6)).astype(np.float32), "texts": np.array([str(i) for i in range(60)])}
    part = split_data(data, holdout=0.5, seed=1).holdout
    scorer = build_scorer(logits_model(6), resolve_metric(f"{name}:score", part), part)
    assert scorer.original == pytest.approx(float(part["x"].sum()) + 1000 + 30 * 10 ** 6, rel=1e-6)
    two_nodes = tiny_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["out"])],
                           ["N", 6], ["N", 6])
    assert scorer.score(two_nodes) == pytest.approx(scorer.original + 1000)
    assert sys.path == before


def test_a_callable_is_used_as_it_is():
    def count(model_path, data):
        return np.float32(len(data["x"]))

    data = {"x": np.zeros((3, 6), np.float32)}
    scorer = build_scorer(logits_model(6), resolve_metric(count, data), data)
    assert scorer.metric.name.endswith("count") and scorer.original == 3.0


@pytest.mark.parametrize("body, spec, message", [
    ("", "no_such_module_anywhere:f", "no module 'no_such_module_anywhere' importable from the working directory"),
    ("x = 1\n", "{name}:f", "has no attribute 'f'"),
    ("f = 3\n", "{name}:f", "has a int, not a function, as 'f'"),
    ("raise RuntimeError('boom')\n", "{name}:f", "importing {name} raised RuntimeError: boom"),
    ("import missing_dependency_xyz\n", "{name}:f",
     "importing {name} failed: No module named 'missing_dependency_xyz'"),
    ("", "not a spec:f", "is not MODULE:FUNCTION"),
    ("", "top3", "is unknown; use one of top1, top5, agreement"),
], ids=["no-module", "no-function", "not-callable", "import-raises", "missing-dependency", "bad-spec", "unknown"])
def test_a_metric_that_does_not_import_is_refused(tmp_path, monkeypatch, body, spec, message):
    name = user_module(tmp_path, monkeypatch, body)
    with pytest.raises(OnnxCpError) as info:
        resolve_metric(spec.format(name=name), {"x": np.zeros((2, 6), np.float32)})
    assert message.format(name=name) in one_line(info) and info.value.usage


@pytest.mark.parametrize("returned, message", [
    ("'0.9'", "returned '0.9' (str), not a number"),
    ("None", "returned None (NoneType), not a number"),
    ("True", "returned True (bool), not a number"),
    ("[0.5]", "returned [0.5] (list), not a number"),
    ("float('nan')", "returned nan; return a finite number"),
    ("1 / 0", "raised ZeroDivisionError: division by zero"),
    ("data['x'].fill(0)", "raised ValueError: assignment destination is read-only"),
], ids=["str", "none", "bool", "list", "nan", "raises", "mutates"])
def test_a_metric_that_returns_no_number_is_refused_saying_what_it_did(tmp_path, monkeypatch, returned, message):
    name = user_module(tmp_path, monkeypatch, f"def f(model_path, data):\n    return {returned}\n")
    data = {"x": np.zeros((2, 6), np.float32)}
    with pytest.raises(OnnxCpError) as info:
        build_scorer(logits_model(6), resolve_metric(f"{name}:f", data), data)
    assert message in one_line(info) and info.value.usage
    assert f"--metric {name}:f" in cli_text(info.value)


# --- the drop ------------------------------------------------------------------------------------


def test_absolute_drop_is_in_the_metric_units_and_its_bound_is_included():
    drop = Drop(0.01)
    assert drop.floor(0.9) == pytest.approx(0.89)
    assert drop.allows(0.89, 0.9) and drop.allows(0.95, 0.9)
    assert not drop.allows(0.8899, 0.9) and not drop.allows(float("nan"), 0.9)
    assert drop.of(0.85, 0.9) == pytest.approx(0.05)
    assert drop_from_percent(1) == Drop(0.01)


def test_relative_drop_is_a_share_of_the_original():
    drop = Drop(0.02, "relative")
    assert drop.floor(50.0) == pytest.approx(49.0) and drop.floor(-10.0) == pytest.approx(-10.2)
    assert drop.allows(49.0, 50.0) and not drop.allows(48.9, 50.0)
    assert drop.of(49.0, 50.0) == pytest.approx(0.02)
    assert drop_from_percent(2, "relative") == drop


@pytest.mark.parametrize("max_drop, kind, message", [
    (-0.01, "absolute", "max_drop=-0.01 must be a number of at least 0"),
    (float("nan"), "absolute", "max_drop=nan must be"),
    ("1", "absolute", "max_drop='1' must be"),
    (0.01, "percent", "drop='percent' is unknown; use one of absolute, relative"),
])
def test_bad_drops_are_refused(max_drop, kind, message):
    with pytest.raises(OnnxCpError) as info:
        Drop(max_drop, kind)
    assert message in one_line(info) and info.value.usage


def test_the_cli_reads_max_drop_in_percent():
    with pytest.raises(OnnxCpError) as info:
        drop_from_percent(-1)
    assert cli_text(info.value).startswith("--max-drop -1 must be") and "--max-drop 1 allows" in cli_text(info.value)


# --- real models ---------------------------------------------------------------------------------


def test_mnist_scores_match_evaluate_on_the_held_back_part():
    model = onnx.load(str(MODELS / "mnist_cnn.onnx"))
    data = subset(load_data(MODELS / "mnist_test.npz", model), np.arange(600))
    parts = split_data(data, holdout=0.3, seed=0)
    held = parts.holdout
    top1 = build_scorer(model, resolve_metric(None, data), held)
    assert top1.metric.name == "top1"
    assert top1.original == pytest.approx(evaluate(model, held["x"], held["y"]).top1)
    # damage the classifier: agreement is the share of images whose top class survives
    damaged = onnx.load(str(MODELS / "mnist_cnn.onnx"))
    weight = max(damaged.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    values = numpy_helper.to_array(weight)
    noisy = values + np.random.default_rng(9).normal(0, 2 * values.std(), values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(noisy, weight.name))
    expected = np.mean(predict(damaged, held["x"]).argmax(1) == predict(model, held["x"]).argmax(1))
    assert 0 < expected < 1
    agreement = build_scorer(model, resolve_metric("agreement", data), held)
    assert agreement.score(damaged) == pytest.approx(expected)
    assert top1.score(damaged) == pytest.approx(evaluate(damaged, held["x"], held["y"]).top1)


def test_a_sampled_target_scores_random_rows_of_the_choosing_part_against_the_original_on_them():
    from onnx_cp import RankSelection
    from onnx_cp.accuracy import AccuracyTarget

    model = onnx.load(str(MODELS / "mnist_cnn.onnx"))
    data = subset(load_data(MODELS / "mnist_test.npz", model), np.arange(600))
    target = AccuracyTarget.build(model, data, RankSelection(max_drop=0.01), {}, seed=0)
    quick = target.sampled(100, seed=1)
    rows = quick.split.selection_rows
    assert len(rows) == 100 and set(rows) <= set(target.split.selection_rows) and np.all(np.diff(rows) > 0)
    assert rows.max() > 500  # drawn from the whole part, not its first rows
    np.testing.assert_array_equal(quick.split.selection["y"], data["y"][rows])
    assert quick.baseline == pytest.approx(evaluate(model, data["x"][rows], data["y"][rows]).top1)
    assert quick.split.holdout is target.split.holdout and target.sampled(420) is target


def _best_path(scores: np.ndarray, symbols: str) -> str:
    """Greedy CTC decoding of one line's (T, classes) scores: group runs, drop the blank (0)."""
    return "".join(symbols[k - 1] for k, _ in itertools.groupby(scores.argmax(-1)) if k != 0)


@pytest.mark.parametrize("charset_form", ["characters", "lines"])
def test_the_ocr_exact_metric_imports_from_the_repository_root_and_reads_the_crnn(monkeypatch, charset_form):
    import onnxruntime as ort

    monkeypatch.chdir(REPO)
    with np.load(MODELS / "crnn_ocr_test.npz") as test:
        x, texts, symbols = test["x"][:48].astype(np.float32) / 255, test["labels"][:48], str(test["charset"])
    charset = symbols if charset_form == "characters" else "\n".join(symbols)
    data = {"x": x, "texts": texts, "charset": np.array(charset)}
    session = ort.InferenceSession(str(MODELS / "crnn_ocr.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]  # (T, N, classes)
    read = [_best_path(out[:, i], symbols) for i in range(len(x))]
    exact = build_scorer(MODELS / "crnn_ocr.onnx", resolve_metric("tools.ocr.exact_metric:exact", data), data)
    assert exact.original == pytest.approx(np.mean([r == t for r, t in zip(read, texts)]))
    chars = build_scorer(MODELS / "crnn_ocr.onnx", resolve_metric("tools.ocr.exact_metric:characters", data), data)
    assert exact.original < chars.original <= 1.0

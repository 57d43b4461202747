"""The character-CNN reproduction's renderer and shipped models (tools/charcnn, models/charcnn36*)."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))  # tools/charcnn is a plain package, not installed

from charcnn import render  # noqa: E402

BASELINE = REPO / "models" / "charcnn36.onnx"
CP = REPO / "models" / "charcnn36_cp.onnx"
TEST = REPO / "models" / "charcnn36_test.npz"


def test_classes_are_digits_then_letters():
    assert render.CLASSES == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_render_gives_documented_shape_range_and_labels():
    x, y = render.render(200, seed=0)
    assert x.shape == (200, 1, 24, 24) and x.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < 36 and len(np.unique(y)) > 30


def test_render_is_deterministic_for_a_seed_and_varies_with_it():
    x1, y1 = render.render(64, seed=7, fonts=render.TEST_FONTS)
    x2, y2 = render.render(64, seed=7, fonts=render.TEST_FONTS)
    x3, _ = render.render(64, seed=8, fonts=render.TEST_FONTS)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_render_draws_both_polarities():
    # dark-on-light crops have a bright border on average, light-on-dark a dark one
    x, _ = render.render(200, seed=1)
    border = np.concatenate([x[:, 0, 0, :], x[:, 0, -1, :], x[:, 0, :, 0], x[:, 0, :, -1]], axis=1).mean(1)
    centre = x[:, 0, 8:16, 8:16].mean((1, 2))
    light_background = border > centre
    assert 0.3 < light_background.mean() < 0.7


def test_test_fonts_are_held_out_of_training():
    assert not set(render.TRAIN_FONTS) & set(render.TEST_FONTS)
    for name in render.TRAIN_FONTS + render.TEST_FONTS:
        assert (Path(render.font_dir()) / name).is_file(), name


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("path", [BASELINE, CP], ids=["baseline", "cp"])
def test_shipped_model_is_valid_and_small(path):
    assert path.stat().st_size < 2_000_000
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_shipped_models_share_the_interface():
    sessions = [_session(BASELINE), _session(CP)]
    for s in sessions:
        (i,), (o,) = s.get_inputs(), s.get_outputs()
        assert (i.name, i.shape[1:], i.type) == ("input", [1, 24, 24], "tensor(float)")
        assert o.name == "logits" and o.shape[1:] == [36]
    x = np.random.default_rng(0).random((3, 1, 24, 24), dtype=np.float32)
    for s in sessions:
        assert s.run(None, {"input": x})[0].shape == (3, 36)


def test_cp_model_holds_the_rewritten_layers():
    model = onnx.load(str(CP))
    meta = {p.key: p.value for p in model.metadata_props}
    assert "onnx_cp" in meta
    layers = json.loads(meta["onnx_cp"])
    assert layers, "no rewritten layer recorded"
    names = {n.name for n in model.graph.node}
    assert any("/cp/" in name for name in names)
    baseline_convs = sum(n.op_type == "Conv" for n in onnx.load(str(BASELINE)).graph.node)
    assert sum(n.op_type == "Conv" for n in model.graph.node) > baseline_convs


def test_shipped_models_classify_the_test_set():
    # floors far below the figures in docs/charcnn.md, far above chance (1/36)
    with np.load(TEST) as f:
        x, y = f["x"].astype(np.float32), f["y"]
    assert x.shape[1:] == (1, 24, 24) and len(x) == len(y)
    sub = slice(0, 1000)
    accs = {}
    for path in (BASELINE, CP):
        logits = _session(path).run(None, {"input": x[sub]})[0]
        accs[path.name] = float((logits.argmax(1) == y[sub]).mean())
    assert accs[BASELINE.name] > 0.7, accs
    assert accs[CP.name] > 0.7, accs
    assert accs[CP.name] > accs[BASELINE.name] - 0.05, accs

"""The shipped CRNN recognizer (models/crnn_ocr.onnx, tools/ocr) and its test lines."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))  # tools/ocr is a plain package, not installed

from ocr.ctc import edit_distance, greedy_decode, scores  # noqa: E402
from ocr.recognizers import read_lines, recognizer  # noqa: E402
from ocr.render import TEST_FONTS, TRAIN_FONTS, render_lines  # noqa: E402
from ocr.whisperer import BLANK, decode  # noqa: E402

MODEL = REPO / "models" / "crnn_ocr.onnx"
TEST = REPO / "models" / "crnn_ocr_test.npz"
# Measured on the first 50 test lines (held-out fonts): see models/README.md; the margin allows
# a different onnxruntime build to flip a line or two.
FIRST_50_EXACT_MEASURED = 0.80  # 40 of 50 (character accuracy 96.1%), onnxruntime 1.32.0
MARGIN = 0.06


def test_greedy_decode_merges_repeats_and_drops_blanks():
    # time x batch: A _ A B B -> "AAB" (a doubled letter needs a blank between); A A _ _ A -> "AA"
    idx = np.array([[11, 11], [0, 11], [11, 0], [12, 0], [12, 11]])
    assert greedy_decode(idx, "0123456789ABC") == ["AAB", "AA"]
    assert greedy_decode(idx.T, "0123456789ABC", time_axis=1) == ["AAB", "AA"]


def test_the_captcha_readers_decoding_skips_class_0_and_its_last_step_and_merges_repeats():
    # captcha-whisperer's own decoding: class 36 is the blank, class 0 never wins, step 19 is ignored
    logits = np.zeros((2, 20, 37), np.float32)
    picks = [[0, 11, 11, BLANK, 11, 12] + [BLANK] * 13 + [13],  # class 0 loses to the runner-up
             [5] * 19 + [7]]
    for n, row in enumerate(picks):
        for t, k in enumerate(row):
            logits[n, t, k] = 1.0
        logits[n, 0, 2] = 0.5  # the runner-up where class 0 is highest
    assert decode(logits) == ["2BBC", "5"]


def test_scores_are_exact_match_and_one_minus_edit_rate():
    assert edit_distance("KITTEN", "SITTING") == 3
    exact, chars = scores(["ABCD", "ABXD", ""], ["ABCD", "ABCD", "AB"])
    assert exact == 1 / 3
    assert abs(chars - (1.0 + 0.75 + 0.0) / 3) < 1e-12


def test_render_is_deterministic_and_test_fonts_are_held_out():
    a = render_lines(8, seed=5, fonts=TEST_FONTS)
    b = render_lines(8, seed=5, fonts=TEST_FONTS)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.texts == b.texts and a.x.shape == (8, 1, 32, 128) and a.x.dtype == np.uint8
    assert all(4 <= len(t) <= 10 and len(c) == len(t) for t, c in zip(a.texts, a.centers))
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)


def test_shipped_model_is_valid_and_holds_an_lstm():
    model = onnx.load(MODEL)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "LSTM" in ops
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 6


def test_shipped_model_reads_the_first_50_test_lines():
    data = np.load(TEST)
    labels = [str(s) for s in data["labels"][:50]]
    texts = read_lines(MODEL, recognizer(MODEL), data["x"][:50])
    exact, chars = scores(texts, labels)
    assert exact >= FIRST_50_EXACT_MEASURED - MARGIN, (exact, list(zip(texts, labels)))
    assert chars >= 0.95


def test_rank_quarter_rewrite_runs_with_the_same_output_shape(tmp_path):
    out = tmp_path / "crnn_cp.onnx"
    subprocess.run(["onnx-cp", "rewrite", str(MODEL), "--rank", "0.25", "--realize", "cp4", "--max-iter", "20",
                    "-o", str(out), "-q"], check=True)
    rewritten = onnx.load(out)
    onnx.checker.check_model(rewritten, full_check=True)
    assert sum(n.op_type == "Conv" for n in rewritten.graph.node) > 6
    x = np.load(TEST)["x"][:4].astype(np.float32) / 255
    shapes = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].shape
              for p in (MODEL, out)]
    assert shapes[0] == shapes[1] == (32, 4, 37)

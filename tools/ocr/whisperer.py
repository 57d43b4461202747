"""captcha-whisperer's CRNN captcha reader (PyPI captcha-whisperer==0.1.0), the captchas it reads, and
its exact-string metric for ``onnx-cp rewrite --metric``.

    python tools/fetch_assets.py whisperer     # assets/captcha_whisperer_crnn.onnx
    pip install captcha==0.7.1                 # the captcha renderer (its wheel ships its fonts)
    x, texts = render(1000, seed=1)            # float32 (1000, 3, 60, 160), the strings
    onnx-cp rewrite assets/captcha_whisperer_crnn.onnx --max-drop 1 --metric tools.ocr.whisperer:exact \\
        --data out/ocr/whisperer/lines.npz --calib out/ocr/whisperer/calib.npy -o fast.onnx

The model: a DenseNet-style trunk of 24 Convs, then a bidirectional LSTM of 100 units per direction
unrolled into 20 steps (each step two Gemms: the input projection from 4,096 features and the
recurrent one), then a MatMul to 37 classes. Input ``image`` N x 3 x 60 x 160, BGR, values in
0..255; output ``logits`` (20, N, 37).

Its own decoding (captcha_whisperer/recognizer.py), mirrored by ``decode``: steps 0..18 only, the
argmax over classes 1..36 (class 0, the digit 0, is never emitted), repeats merged, class 36 the
blank. So the captchas here are 4 characters of 1-9 and A-Z, rendered by the ``captcha`` package's
ImageCaptcha at 160 x 60, its default size, and fed as the package's preprocessing feeds them.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from .ctc import scores

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
MODEL = ASSETS / "captcha_whisperer_crnn.onnx"
INPUT = "image"
HEIGHT, WIDTH = 60, 160
LABELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # class k reads LABELS[k]; class 36 is the blank
BLANK = 36
SYMBOLS = LABELS[1:]  # what the decoding can emit
LENGTH = 4


def input_shape() -> str:
    """The ``--input-shape`` value for batch 1."""
    return f"{INPUT}=1x3x{HEIGHT}x{WIDTH}"


def render(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` captchas of ``LENGTH`` random symbols: the model's input (BGR, 0..255) and the strings."""
    try:
        from captcha.image import ImageCaptcha
    except ImportError as exc:
        raise SystemExit("the captcha renderer is missing: pip install captcha==0.7.1") from exc
    # ImageCaptcha draws its noise from the random module; seeding it makes the images repeatable.
    random.seed(seed)
    picker = random.Random(seed + 1)
    generator = ImageCaptcha(width=WIDTH, height=HEIGHT)
    texts = ["".join(picker.choice(SYMBOLS) for _ in range(LENGTH)) for _ in range(n)]
    x = np.empty((n, 3, HEIGHT, WIDTH), np.float32)
    for i, text in enumerate(texts):
        rgb = np.asarray(generator.generate_image(text).convert("RGB"), dtype=np.float32)
        x[i] = rgb[:, :, ::-1].transpose(2, 0, 1)
    return x, texts


def decode(logits: np.ndarray) -> list[str]:
    """The package's greedy decoding of (N, 20, 37) scores."""
    steps = logits[:, :-1, 1:].argmax(-1) + 1  # N x 19 classes in 1..36
    texts = []
    for row in steps:
        kept = [k for i, k in enumerate(row) if k != BLANK and (i == 0 or k != row[i - 1])]
        texts.append("".join(LABELS[k] for k in kept))
    return texts


def read(model_path: str, data: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(predictions, labels) of every captcha of ``data`` (``x`` and ``texts``)."""
    from onnx_cp.accuracy.outputs import output_batches

    predicted: list[str] = []
    for _, out in output_batches(model_path, data["x"]):  # out: (n, 20, 37)
        predicted += decode(out)
    return predicted, [str(t) for t in data["texts"]]


def exact(model_path: str, data: Mapping[str, np.ndarray]) -> float:
    """The share of captchas read exactly."""
    return scores(*read(model_path, data))[0]


def characters(model_path: str, data: Mapping[str, np.ndarray]) -> float:
    """Mean character accuracy, 1 - edit distance / length."""
    return scores(*read(model_path, data))[1]


def main(argv: list[str]) -> int:
    from .exact_metric import main as report

    return report(argv, read, "tools.ocr.whisperer")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

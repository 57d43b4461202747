"""ddddocr's float captcha recognizer (PyPI ddddocr==1.6.1, ``ddddocr/common.onnx``) and lines it reads.

    python tools/fetch_assets.py ddddocr       # assets/ddddocr_common.onnx, assets/ddddocr_charsets.py
    symbols = charset()                        # the symbols of classes 1..8209 (0 is the CTC blank)
    x, texts = render(1000, seed=1)            # float32 (1000, 1, 64, 170) in [0, 1], the strings

The model (its "beta" model: 21 Convs, a bidirectional LSTM of hidden size 512, a Gemm to 8,210
classes) takes ``input1`` 1 x 1 x 64 x W, its batch fixed at 1, and outputs (T, 1, 8210) scores,
T = ceil(W / 8) (22 at W = 170). The exporter declares the output as [1, seqlen], which
onnxruntime warns about on every run (onnx-cp's sessions are quiet).

Its own preprocessing (ddddocr/core/ocr_engine.py) resizes an image to height 64 keeping the
aspect ratio, converts it to grey and divides by 255; its decoding takes the argmax per step,
merges repeats and drops class 0, with ``CHARSET_BETA`` from ddddocr/charsets.py. The lines here
are rendered at 64 x 170 (a 2.7:1 captcha) by tools/ocr/render.py, so they need no resize.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from ocr.render import TEST_FONTS, TRAIN_FONTS, render_lines, to_float

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
MODEL = ASSETS / "ddddocr_common.onnx"
CHARSETS = ASSETS / "ddddocr_charsets.py"
INPUT = "input1"
HEIGHT, WIDTH = 64, 170
FONTS = TRAIN_FONTS + TEST_FONTS  # the recognizer was trained elsewhere: every font is unseen


def charset(path: Path = CHARSETS) -> list[str]:
    """The symbols of classes 1, 2, ... of the float model: ``CHARSET_BETA`` without its blank,
    read as a literal (the file is never imported)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run python tools/fetch_assets.py ddddocr")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CHARSET_BETA":
            symbols = ast.literal_eval(node.value)
            return list(symbols[1:])
    raise ValueError(f"{path}: no CHARSET_BETA list")


def input_shape() -> str:
    """The ``--input-shape`` value that fixes the model's width."""
    return f"{INPUT}=1x1x{HEIGHT}x{WIDTH}"


def render(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` lines of 4-10 characters of 0-9 and A-Z: the model's input and the strings."""
    lines = render_lines(n, seed, FONTS, height=HEIGHT, width=WIDTH)
    return to_float(lines.x), lines.texts

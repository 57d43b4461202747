"""Labelled and unlabelled text lines for an OCR recognizer, as ``onnx-cp rewrite --data`` / ``--calib`` take them.

    python tools/make_ocr_data.py ddddocr          # out/ocr/ddddocr/{lines.npz, calib.npy}
    python tools/make_ocr_data.py crnn             # out/ocr/crnn/{lines.npz, calib.npy}
    python tools/make_ocr_data.py whisperer        # out/ocr/whisperer/{lines.npz, calib.npy}

- ``lines.npz``: ``x`` (the model's input, float32), ``texts`` (the strings) and ``charset``
  (the symbols of classes 1, 2, ..., one per line), the data tools/ocr/exact_metric.py scores.
  ddddocr: ``--lines`` lines (seed 1) rendered at 64 x 170 in every matplotlib font
  (tools/ocr/ddddocr.py). crnn: models/crnn_ocr_test.npz (held-out fonts) scaled to [0, 1].
  whisperer: ``--lines`` captchas (seed 1) of the ``captcha`` package, scored by its own decoding
  (tools/ocr/whisperer.py; no ``charset``).
- ``calib.npy``: ``--calib`` unlabelled lines of other strings (seed 100, the CRNN's training
  fonts for crnn, as tools/bench_ocr.py draws its calibration lines).

Then prints the original model's exact-string and character accuracy on ``lines.npz``, the check
that rendering and decoding agree with what the model reads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))  # tools/ocr, tools/charcnn
sys.path.insert(0, str(REPO))  # tools.ocr.exact_metric, as --metric imports it

from ocr import ddddocr, whisperer  # noqa: E402
from ocr.render import CHARSET as CRNN_CHARSET  # noqa: E402
from ocr.render import TRAIN_FONTS, render_lines, to_float  # noqa: E402
from tools.ocr.ctc import scores  # noqa: E402
from tools.ocr.exact_metric import read  # noqa: E402

CALIB_SEED, LINES_SEED = 100, 1


def ddddocr_data(lines: int, calib: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, texts = ddddocr.render(lines, LINES_SEED)
    labelled = {"x": x, "texts": np.array(texts), "charset": np.array("\n".join(ddddocr.charset()))}
    return labelled, ddddocr.render(calib, CALIB_SEED)[0]


def crnn_data(lines: int, calib: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(REPO / "models" / "crnn_ocr_test.npz") as test:
        x, texts = test["x"][:lines], test["labels"][:lines]
    labelled = {"x": to_float(x), "texts": texts, "charset": np.array("\n".join(CRNN_CHARSET))}
    return labelled, to_float(render_lines(calib, CALIB_SEED, TRAIN_FONTS).x)


def whisperer_data(lines: int, calib: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, texts = whisperer.render(lines, LINES_SEED)
    return {"x": x, "texts": np.array(texts)}, whisperer.render(calib, CALIB_SEED)[0]


# recognizer -> (its model, the data it reads, how its lines are read and decoded)
RECOGNIZERS = {"ddddocr": (ddddocr.MODEL, ddddocr_data, read),
               "crnn": (REPO / "models" / "crnn_ocr.onnx", crnn_data, read),
               "whisperer": (whisperer.MODEL, whisperer_data, whisperer.read)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recognizer", choices=sorted(RECOGNIZERS))
    parser.add_argument("--lines", type=int, default=1000, help="labelled lines (crnn: at most 800)")
    parser.add_argument("--calib", type=int, default=512, help="unlabelled lines for --calib")
    parser.add_argument("--out", type=Path, default=None, help="folder (default out/ocr/RECOGNIZER)")
    args = parser.parse_args(argv)
    out = args.out or REPO / "out" / "ocr" / args.recognizer
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, make, reader = RECOGNIZERS[args.recognizer]
    labelled, calib = make(args.lines, args.calib)
    np.savez_compressed(out / "lines.npz", **labelled)
    np.save(out / "calib.npy", calib)
    print(f"{out / 'lines.npz'}: {len(labelled['x'])} lines {list(labelled['x'].shape[1:])}; "
          f"{out / 'calib.npy'}: {len(calib)} lines ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    exact, chars = scores(*reader(str(model), labelled))
    print(f"{model.name}: exact {exact:.2%}, characters {chars:.2%} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

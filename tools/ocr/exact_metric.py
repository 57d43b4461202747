"""Exact-string and character accuracy of a CTC recognizer, as metrics for ``onnx-cp rewrite --metric``.

    onnx-cp rewrite M --max-drop 1 --data lines.npz --metric tools.ocr.exact_metric:exact -o fast.onnx
    python -m tools.ocr.exact_metric MODEL lines.npz        # both figures, from the repository root

Each is ``f(model_path, data) -> float`` (higher is better). ``data`` holds:
- ``x``: the model's input, N x ... floats, fed as they are;
- ``texts`` (or ``labels``): the string each line reads;
- ``charset``: one string, the symbols of classes 1, 2, ... (class 0 is the CTC blank), either one
  character per class or, where a symbol is longer or a charset is large, one per line
  (tools/make_ocr_data.py writes both kinds).

The model's first output holds per-position class scores, (T, N, C) or (N, T, C) (onnx-cp finds
the samples' axis); greedy CTC decoding reads it. Predictions and labels are compared after
NFKC normalization, upper-casing and removing white space, since the lines hold 0-9 and A-Z while
a captcha reader such as ddddocr answers in either case and sometimes in full-width forms.
Exact: the share of lines read exactly; characters: 1 - edit distance / label length, averaged.
"""
from __future__ import annotations

import sys
import unicodedata
from typing import Mapping

import numpy as np

from .ctc import greedy_decode, scores


def exact(model_path: str, data: Mapping[str, np.ndarray]) -> float:
    """The share of lines whose decoded text is the label."""
    return scores(*read(model_path, data))[0]


def characters(model_path: str, data: Mapping[str, np.ndarray]) -> float:
    """Mean character accuracy, 1 - edit distance / label length (at least 0) per line."""
    return scores(*read(model_path, data))[1]


def read(model_path: str, data: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(normalized predictions, normalized labels) of every line of ``data``."""
    from onnx_cp.accuracy import output_batches

    symbols = charset_symbols(data["charset"])
    predicted: list[str] = []
    for _, out in output_batches(model_path, data["x"]):
        predicted += greedy_decode(out.argmax(-1), symbols, time_axis=1)  # out: (n, T, classes)
    labels = data["texts"] if "texts" in data else data["labels"]
    return [normalize(p) for p in predicted], [normalize(str(t)) for t in labels]


def charset_symbols(charset) -> list[str]:
    """The symbols of classes 1, 2, ... from the stored charset string."""
    text = str(np.asarray(charset)[()])
    return text.split("\n") if "\n" in text else list(text)


def normalize(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).upper().split())


def main(argv: list[str], reader=None, module: str = "tools.ocr.exact_metric") -> int:
    """Print both figures of MODEL on DATA.npz; ``reader`` is another recognizer's ``read``."""
    if len(argv) != 2:
        print(f"usage: python -m {module} MODEL DATA.npz", file=sys.stderr)
        return 2
    with np.load(argv[1]) as archive:
        data = {key: archive[key] for key in archive.files}
    predicted, labels = (reader or read)(argv[0], data)
    exact_rate, chars = scores(predicted, labels)
    print(f"{argv[0]}: {len(labels)} lines, exact {exact_rate:.2%}, characters {chars:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

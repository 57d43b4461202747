"""How to feed and decode the two recognizers tools/bench_ocr.py measures, on the same rendered lines.

    rec = recognizer(path)                  # CRNN (tools/ocr/model.py) or PP-OCR, told apart by the graph
    texts = read_lines(path_or_model, rec, x_uint8)

- ``crnn``: the CRNN of tools/ocr/model.py; input ``input`` N x 1 x 32 x 128 = x / 255; output
  (T, N, 37) log-probabilities; classes after the blank: 0-9 A-Z.
- ``ppocr``: PP-OCRv4's recognizer from the rapidocr wheel (tools/fetch_assets.py); input ``x``
  N x 3 x 48 x W; output (N, T, 6625) softmax. Its dictionary ships in the model itself (metadata
  key ``character``, one symbol a line); the classes after the blank are the dictionary plus a
  space, as in RapidOCR. A rendered 32 x 128 line is resized to 48 x 192 (bilinear), repeated to
  3 channels, normalized to (x / 255 - 0.5) / 0.5 and padded with zeros to W = 320, as RapidOCR
  pads a line. Its predictions are compared upper-cased with spaces removed, since the lines
  hold only 0-9 and A-Z.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ocr.ctc import greedy_decode
from ocr.model import CHARSET, HEIGHT, INPUT, WIDTH
from ocr.render import to_float

PPOCR_WIDTH = 320


@dataclass(frozen=True)
class Recognizer:
    kind: str  # "crnn" or "ppocr"
    input_name: str
    input_shape: tuple[int, ...]  # batch 1, for --input-shape and latency
    charset: tuple[str, ...]
    time_axis: int
    preprocess: Callable[[np.ndarray], np.ndarray]  # uint8 N x 1 x 32 x 128 -> the model's input
    normalize: Callable[[str], str]  # prediction -> the form compared with labels

    def cli_shape(self) -> str:
        return f"{self.input_name}=" + "x".join(str(d) for d in self.input_shape)


def _ppocr_input(x: np.ndarray) -> np.ndarray:
    import torch

    h = 48
    w = round(WIDTH * h / HEIGHT)
    resized = torch.nn.functional.interpolate(torch.from_numpy(to_float(x)), size=(h, w), mode="bilinear",
                                              align_corners=False).numpy()
    out = np.zeros((len(x), 3, h, PPOCR_WIDTH), np.float32)
    out[:, :, :, :w] = (resized - 0.5) / 0.5
    return out


def recognizer(path: str | Path) -> Recognizer:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    meta = {p.key: p.value for p in model.metadata_props}
    if INPUT in inputs:
        return Recognizer("crnn", INPUT, (1, 1, HEIGHT, WIDTH), tuple(CHARSET), 0, to_float, lambda s: s)
    if "x" in inputs and "character" in meta:
        charset = tuple(meta["character"].splitlines()) + (" ",)
        return Recognizer("ppocr", "x", (1, 3, 48, PPOCR_WIDTH), charset, 1, _ppocr_input,
                          lambda s: s.replace(" ", "").upper())
    raise ValueError(f"{path}: neither the CRNN (input {INPUT!r}) nor a PP-OCR recognizer (input 'x' and "
                     f"metadata 'character'); inputs are {inputs}")


def read_lines(model, rec: Recognizer, x: np.ndarray, *, batch: int = 100, threads: int = 2) -> list[str]:
    """Greedy-decoded, normalized text of each line of ``x`` (uint8 N x 1 x 32 x 128)."""
    from onnx_cp.runtime import open_session, session_options

    session = open_session(model, session_options(threads=threads, quiet=True))
    texts: list[str] = []
    for i in range(0, len(x), batch):
        (out,) = session.run(None, {rec.input_name: rec.preprocess(x[i:i + batch])})
        texts += greedy_decode(out.argmax(-1), rec.charset, time_axis=rec.time_axis)
    return [rec.normalize(t) for t in texts]

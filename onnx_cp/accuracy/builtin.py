"""The built-in metrics on one batch of outputs (samples on axis 0): hits in the top k, and
per-position predictions for agreement.

    hits = top_k_hits(out, y, k=1)                 # bool (n,)
    predicted, valid = predictions(out)            # int (n, positions), bool: no NaN at the position

Ties count against the label (a model that outputs one value for every class scores 0), and a
position whose outputs hold NaN agrees with nothing.
"""
from __future__ import annotations

import numpy as np

from onnx_cp.accuracy.data import shape_text
from onnx_cp.accuracy.outputs import class_axis
from onnx_cp.errors import OnnxCpError

SEQUENCE_FIX = "use metric 'agreement' or a MODULE:FUNCTION metric"


def by_position(out: np.ndarray) -> np.ndarray:
    """``out`` as (samples, positions, classes)."""
    if out.ndim < 2:
        raise OnnxCpError(f"the model's first output has shape {shape_text(out.shape)}: one value per sample, no "
                          "classes to take the argmax of; score it with a MODULE:FUNCTION metric", usage=True)
    classes = np.moveaxis(out, class_axis(out.ndim), -1)
    return classes.reshape(len(out), -1, classes.shape[-1])


def predictions(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample and position: the class of the largest output, and whether it holds no NaN."""
    grid = by_position(out)
    return grid.argmax(-1), ~np.isnan(grid).any(-1)


def top_k_hits(out: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per sample: fewer than ``k`` other classes score at least the label's output (NaN: a miss)."""
    grid = by_position(out)
    if grid.shape[1] != 1:
        raise OnnxCpError(f"top-{k} compares one class per sample with y, but the model's first output gives "
                          f"{grid.shape[1]} positions per sample (shape {shape_text(out.shape)}); {SEQUENCE_FIX}",
                          usage=True)
    scores = grid[:, 0, :]
    check_labels(labels, scores.shape[1])
    true = scores[np.arange(len(labels)), labels][:, None]
    ahead = (scores >= true).sum(axis=1) - 1
    return (ahead < min(k, scores.shape[1])) & ~np.isnan(true[:, 0])


def check_labels(labels: np.ndarray, classes: int) -> None:
    if len(labels) and labels.max() >= classes:
        raise OnnxCpError(f"y holds class {labels.max()} but the model's first output has {classes} classes; "
                          f"labels are class indices 0..{classes - 1} in the output's order", usage=True)


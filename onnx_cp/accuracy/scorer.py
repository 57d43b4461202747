"""Scoring models with one metric on one part of the data, the original measured once.

    scorer = build_scorer(original, resolve_metric("agreement", data), parts.selection)
    scorer.original                 # the original's score (agreement: 1.0 unless it outputs NaN)
    scorer.score(rewritten)         # a ModelProto or a path; onnxruntime CPU, batched

Built-in metrics run the model in onnxruntime (onnx_cp.accuracy.outputs) and keep only what the
metric needs per batch: top-k hits, or the top class per position for agreement (the original's
are kept for comparison). A user's function gets the model's path and the part's arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from onnx_cp.accuracy.builtin import predictions, top_k_hits
from onnx_cp.accuracy.metric import TOP_K, Metric
from onnx_cp.accuracy.outputs import output_batches
from onnx_cp.accuracy.user_metric import call_metric
from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import ModelLike


@dataclass(frozen=True)
class Scorer:
    """``score(model)``: ``metric`` on ``data``; ``original``: the original model's score.

    ``reference``: the original's top class per sample and position (agreement only).
    ``threads``: onnxruntime's intra-op threads for the built-in metrics (None: its default).
    """

    metric: Metric
    data: Mapping[str, np.ndarray]
    original: float
    reference: np.ndarray | None = None
    threads: int | None = None
    batch_size: int = 64

    def score(self, model: ModelLike) -> float:
        return _measure(model, self, self.reference)[0]


def build_scorer(original: ModelLike, metric: Metric, data: Mapping[str, np.ndarray], *,
                 threads: int | None = None, batch_size: int = 64) -> Scorer:
    """A Scorer for ``data`` with the original's score (and, for agreement, its predictions) measured.

    Labels that do not fit the original's outputs are refused here, in one line.
    """
    unmeasured = Scorer(metric, data, float("nan"), None, threads, batch_size)
    score, reference = _measure(original, unmeasured, None)
    return Scorer(metric, data, score, reference, threads, batch_size)


def _measure(model: ModelLike, scorer: Scorer, reference: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """The score of ``model``, and its predictions when the metric is agreement."""
    metric, data = scorer.metric, scorer.data
    if metric.function is not None:
        return call_metric(metric.function, metric.name, model, data), None
    batches = output_batches(model, data["x"], batch_size=scorer.batch_size, threads=scorer.threads)
    if metric.needs_labels:
        y, k = data["y"], TOP_K[metric.name]
        hits = np.concatenate([top_k_hits(out, y[start:start + len(out)], k) for start, out in batches])
        return float(hits.mean()), None
    found = [predictions(out) for _, out in batches]
    predicted = np.concatenate([p for p, _ in found])
    agree = np.concatenate([valid for _, valid in found])
    if reference is not None:
        if predicted.shape != reference.shape:
            raise OnnxCpError(f"the model's first output gives {predicted.shape[1]} positions per sample, the "
                              f"original's {reference.shape[1]}: their predictions cannot be compared")
        agree &= predicted == reference
    return float(agree.mean()), predicted

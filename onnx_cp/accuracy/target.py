"""What ``max_drop`` promises, as one object: the data split once, the metric, the allowed drop,
and the original's score on each part (the part that chooses and the part held back)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx

from onnx_cp.accuracy.data import load_data
from onnx_cp.accuracy.drop import Drop
from onnx_cp.accuracy.metric import Metric, resolve_metric
from onnx_cp.accuracy.scorer import Scorer, build_scorer
from onnx_cp.accuracy.split import DataSplit, split_data, subset


@dataclass
class AccuracyTarget:
    """``score`` measures a model on the choosing part, ``held`` on the held-back one."""

    original: onnx.ModelProto
    metric: Metric
    drop: Drop
    split: DataSplit
    chooser: Scorer
    threads: int | None = None
    _holdout: Scorer | None = field(default=None, repr=False)

    @classmethod
    def build(cls, model: onnx.ModelProto, source, selection, input_shapes: Mapping[str, tuple[int, ...]],
              seed: int, threads: int | None = None) -> "AccuracyTarget":
        """Read and split the data, resolve the metric, score the original on the choosing part.
        ``selection``: a RankSelection with ``max_drop``, ``drop``, ``metric`` and ``holdout``."""
        data = load_data(source, model, input_shapes)
        split = split_data(data, selection.holdout, seed)
        metric = resolve_metric(selection.metric, data)
        chooser = build_scorer(model, metric, split.selection, threads=threads)
        return cls(model, metric, Drop(selection.max_drop, selection.drop), split, chooser, threads)

    def sampled(self, rows: int, seed: int = 0) -> "AccuracyTarget":
        """This target on ``rows`` samples of the choosing part drawn at random (``seed``), the
        original scored on them; itself where the part has no more: a quicker, noisier measure."""
        count = len(self.split.selection_rows)
        if count <= rows:
            return self
        pick = np.sort(np.random.default_rng(seed).choice(count, rows, replace=False))
        data = subset(self.split.selection, pick)
        split = dataclasses.replace(self.split, selection=data, selection_rows=self.split.selection_rows[pick])
        chooser = build_scorer(self.original, self.metric, data, threads=self.threads)
        return dataclasses.replace(self, split=split, chooser=chooser)

    @property
    def baseline(self) -> float:
        """The original's score on the choosing part."""
        return self.chooser.original

    def score(self, model) -> float:
        return self.chooser.score(model)

    def allows(self, score: float) -> bool:
        return self.drop.allows(score, self.baseline)

    def drop_of(self, score: float) -> float:
        return self.drop.of(score, self.baseline)

    @property
    def holdout(self) -> Scorer:
        """The held-back part's scorer (the original scored on first use)."""
        if self._holdout is None:
            self._holdout = build_scorer(self.original, self.metric, self.split.holdout, threads=self.threads)
        return self._holdout

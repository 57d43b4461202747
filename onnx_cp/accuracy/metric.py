"""Which metric scores the models: a built-in one by name, or the user's function.

    metric = resolve_metric(None, data)                      # top1 when data has labels y, else agreement
    metric = resolve_metric("top5", data)
    metric = resolve_metric("mymetrics:exact_match", data)   # MODULE:FUNCTION, imported here
    metric = resolve_metric(my_function, data)               # f(model_path, data) -> float

Every metric is higher-is-better and gives one number:
- ``top1`` / ``top5``: the share of samples whose label y is the model's top class / among its
  top five (needs labels; ties count against the label);
- ``agreement``: the share of samples, or of positions for per-position outputs such as a CTC
  sequence, where the model's top class is the original's (needs no labels);
- a user's function, called with the model's path and the part's arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from onnx_cp.accuracy.user_metric import MetricFunction, import_metric, metric_param
from onnx_cp.errors import OnnxCpError, param

BUILTIN_METRICS = ("top1", "top5", "agreement")
TOP_K = {"top1": 1, "top5": 5}


@dataclass(frozen=True)
class Metric:
    """A built-in metric (``function`` None) or the user's function, under the name messages use."""

    name: str
    function: MetricFunction | None = None

    @property
    def needs_labels(self) -> bool:
        return self.name in TOP_K and self.function is None

    @property
    def needs_original(self) -> bool:
        """Whether each score compares with the original's outputs (agreement)."""
        return self.name == "agreement" and self.function is None


def resolve_metric(metric: str | MetricFunction | None, data: Mapping[str, np.ndarray]) -> Metric:
    """The metric ``metric`` names, checked against ``data`` (labels where it needs them)."""
    if metric is None:
        return Metric("top1" if "y" in data else "agreement")
    if callable(metric):
        return Metric(getattr(metric, "__qualname__", None) or repr(metric), metric)
    if not isinstance(metric, str):
        raise OnnxCpError(f"{param('metric', repr(metric))} is neither a metric name nor a function; use one of "
                          f"{', '.join(BUILTIN_METRICS)}, MODULE:FUNCTION or a callable", usage=True)
    if ":" in metric:
        return Metric(metric, import_metric(metric))
    if metric not in BUILTIN_METRICS:
        raise OnnxCpError(f"{metric_param(metric)} is unknown; use one of {', '.join(BUILTIN_METRICS)} or "
                          "MODULE:FUNCTION (a function f(model_path, data) -> float)", usage=True)
    if metric in TOP_K and "y" not in data:
        raise OnnxCpError(f"{metric_param(metric)} needs labels, and the data has none (it holds "
                          f"{', '.join(sorted(data))}); add an array y of class indices, or use "
                          f"{metric_param('agreement')}, which needs none", usage=True)
    return Metric(metric)

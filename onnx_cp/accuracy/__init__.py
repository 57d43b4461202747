"""Accuracy targets: the user's data, a seeded split, a metric, the allowed drop, and a scorer.

    from onnx_cp.accuracy import Drop, build_scorer, load_data, resolve_metric, split_data
    data = load_data("val.npz", model)                 # x (and y, texts, ...) checked against the input
    parts = split_data(data, holdout=0.3, seed=0)      # selection chooses, holdout is reported
    metric = resolve_metric(None, data)                # top1 with labels, agreement without
    scorer = build_scorer(model, metric, parts.selection)
    Drop(0.01).allows(scorer.score(candidate), scorer.original)

onnxruntime loads with the first scored model, not on import.
"""
from onnx_cp.accuracy.data import DataSource, data_param, load_data, model_input, sample_count
from onnx_cp.accuracy.drop import DROP_KINDS, Drop, drop_from_percent, max_drop_param
from onnx_cp.accuracy.metric import BUILTIN_METRICS, Metric, resolve_metric
from onnx_cp.accuracy.outputs import class_axis, output_batches
from onnx_cp.accuracy.scorer import Scorer, build_scorer
from onnx_cp.accuracy.split import MIN_PART, DataSplit, split_data, subset
from onnx_cp.accuracy.target import AccuracyTarget
from onnx_cp.accuracy.user_metric import MetricFunction, call_metric, import_metric

__all__ = [
    "AccuracyTarget", "BUILTIN_METRICS", "DROP_KINDS", "DataSource", "DataSplit", "Drop", "MIN_PART", "Metric", "MetricFunction",
    "Scorer", "build_scorer", "call_metric", "class_axis", "data_param", "drop_from_percent", "import_metric",
    "load_data", "max_drop_param", "model_input", "output_batches", "resolve_metric", "sample_count", "split_data",
    "subset",
]

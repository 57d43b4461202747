"""Benchmark ONNX models in onnxruntime's CPU execution provider, whole-model and per layer.

    from onnx_cp.bench import measure_latency, profile_nodes, compare
    original, rewritten = measure_latency(["vgg16.onnx", "vgg16.cp.onnx"], runs=100)
    per_layer = compare(*profile_nodes(["vgg16.onnx", "vgg16.cp.onnx"]), latency=(original, rewritten))

``run_bench`` does all of it and returns a BenchReport for ``render_terminal``, ``render_json``,
``render_markdown`` and ``render_html``.
"""
from onnx_cp.bench.attribution import Attribution, Resolved
from onnx_cp.bench.compare import Comparison, LayerComparison, compare
from onnx_cp.bench.config import OPT_LEVELS, BenchConfig
from onnx_cp.bench.html import render_html
from onnx_cp.bench.latency import LatencyStats, measure_latency
from onnx_cp.bench.metadata import CpLayer, read_cp_layers
from onnx_cp.bench.profile import LayerTime, NodeProfile, NodeTime, aggregate, profile_nodes
from onnx_cp.bench.render import render_json, render_markdown, render_terminal
from onnx_cp.bench.report import BenchReport, ModelResult, run_bench

__all__ = [
    "Attribution", "BenchConfig", "BenchReport", "Comparison", "CpLayer", "LatencyStats", "LayerComparison",
    "LayerTime", "ModelResult", "NodeProfile", "NodeTime", "OPT_LEVELS", "Resolved", "aggregate", "compare",
    "measure_latency", "profile_nodes", "read_cp_layers", "render_html", "render_json", "render_markdown",
    "render_terminal", "run_bench",
]

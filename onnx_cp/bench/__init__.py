"""Benchmark ONNX models in onnxruntime's CPU execution provider, whole-model and per layer.

    from onnx_cp.bench import measure_latency, profile_nodes, compare
    original, rewritten = measure_latency(["vgg16.onnx", "vgg16.cp.onnx"], runs=100)
    per_layer = compare(*profile_nodes(["vgg16.onnx", "vgg16.cp.onnx"]), latency=(original, rewritten))

``run_bench`` does all of it and returns a BenchReport for ``render_terminal``, ``render_json``,
``render_markdown`` and ``render_html``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_cp.bench.attribution import Attribution, Resolved
from onnx_cp.bench.compare import Comparison, LayerComparison, compare
from onnx_cp.bench.config import BenchConfig
from onnx_cp.bench.html import render_html
from onnx_cp.bench.latency import LatencyStats, measure_latency
from onnx_cp.bench.profile import LayerTime, NodeProfile, NodeTime, aggregate, profile_nodes, profile_outputs
from onnx_cp.bench.report import BenchReport, ModelResult, run_bench
from onnx_cp.provenance import CpLayer, read_cp_layers
from onnx_cp.runtime import OPT_LEVELS

if TYPE_CHECKING:
    from onnx_cp.bench.render import render_json, render_markdown, render_terminal

__all__ = [
    "Attribution", "BenchConfig", "BenchReport", "Comparison", "CpLayer", "LatencyStats", "LayerComparison",
    "LayerTime", "ModelResult", "NodeProfile", "NodeTime", "OPT_LEVELS", "Resolved", "aggregate", "compare",
    "measure_latency", "profile_nodes", "profile_outputs", "read_cp_layers", "render_html", "render_json",
    "render_markdown", "render_terminal", "run_bench",
]


def __getattr__(name: str):
    # The terminal renderer needs rich: it loads on first use (onnxruntime loads with the first session).
    if name in ("render_json", "render_markdown", "render_terminal"):
        from onnx_cp.bench import render

        return getattr(render, name)
    raise AttributeError(f"module 'onnx_cp.bench' has no attribute {name!r}")

"""Timing for the INT8 decisions: the rewrite's measurement service (measure.Measurement), node by node.

``Timing.layers`` keys each profile by the tensors a layer outputs, and a layer is a node of the
model, except that the profiler counts a low-rank rewrite's chain (``<conv>/cp/*``, listed in the
``onnx_cp`` metadata) as the one Conv it replaced. Here each stage of a chain decides for itself
(a small depthwise stage may not pay in int8 where its 1x1 neighbours do), so the models are
timed as ``per_node_view``s: every node its own layer.
"""
from __future__ import annotations

import onnx

from onnx_cp.measure import Measurement as Timing
from onnx_cp.provenance import MARKS, METADATA_KEY


def onnxruntime_timing(model: onnx.ModelProto, threads: int, opt_level: str, input_shapes) -> Timing:
    """The measurement service in onnxruntime's CPU EP (``Timing.injected`` takes computed times)."""
    return Timing.onnxruntime(model, threads, opt_level, input_shapes)


__all__ = ["Timing", "onnxruntime_timing", "per_node_view"]


def per_node_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that the profiler attributes node by node: without the ``onnx_cp``
    metadata entry, and with node names that carry no decomposition mark (``/cp/`` -> ``/cp|``).
    Tensor names, which the profiles are keyed by, are unchanged."""
    view = onnx.ModelProto()
    view.CopyFrom(model)
    kept = [p for p in view.metadata_props if p.key != METADATA_KEY]
    del view.metadata_props[:]
    view.metadata_props.extend(kept)
    for node in view.graph.node:
        for mark in MARKS:
            node.name = node.name.replace(mark, mark[:-1] + "|")
    return view

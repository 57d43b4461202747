"""A deterministic stand-in for onnxruntime's timing, for tests that pin what a rewrite decides.

A node costs its multiply-adds (a depthwise Conv eight times over, as memory-bound stages run in
onnxruntime) plus a fixed overhead per node; a layer's time is the sum over the nodes attributed
to it: the node writing its output and every node named after it (``name/...``), as the
rewriter names the stages it builds. A model's time adds the nodes attributed to no layer.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx

MS_PER_MAC = 1e-6
MS_PER_NODE = 0.02
DEPTHWISE = 8.0  # multiply-adds of a depthwise stage cost this many times a dense one's
LAYER_OPS = ("Conv", "Gemm", "MatMul")


class FakeTiming:
    """``layers(models)`` and ``whole(models)`` as onnxruntime's timing gives them, computed."""

    def __init__(self, original: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]):
        self.shapes = dict(input_shapes)
        self.layer_names = {n.name: n.output[0] for n in original.graph.node if n.op_type in LAYER_OPS}
        self.calls = 0

    def layers(self, models: Sequence[onnx.ModelProto]) -> list[dict[str, float]]:
        self.calls += 1
        return [self._times(m)[0] for m in models]

    def whole(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        self.calls += 1
        return [sum(self._times(m)[0].values()) + self._times(m)[1] for m in models]

    def _times(self, model: onnx.ModelProto) -> tuple[dict[str, float], float]:
        shapes = _shapes(model, self.shapes)
        sizes = {t.name: tuple(t.dims) for t in model.graph.initializer}
        per_layer: dict[str, float] = {}
        rest = 0.0
        for node in model.graph.node:
            ms = MS_PER_NODE + MS_PER_MAC * _macs(node, shapes, sizes)
            key = self._owner(node)
            if key is None:
                rest += ms
            else:
                per_layer[key] = per_layer.get(key, 0.0) + ms
        return per_layer, rest

    def _owner(self, node: onnx.NodeProto) -> str | None:
        if node.name in self.layer_names and node.output[0] == self.layer_names[node.name]:
            return node.output[0]
        owners = [n for n in self.layer_names if node.name.startswith(n + "/")]
        return self.layer_names[max(owners, key=len)] if owners else None


def _shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    inferred = onnx.shape_inference.infer_shapes(fixed)
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _macs(node: onnx.NodeProto, shapes, sizes) -> float:
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0.0
    n = float(np.prod(out))
    if node.op_type == "Conv" and len(node.input) > 1:
        w = sizes.get(node.input[1]) or shapes.get(node.input[1])
        if not w:
            return n
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        per = float(np.prod(w[1:]))
        return n * per * (DEPTHWISE if group > 1 and w[1] == 1 else 1.0)
    if node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        trans = any(x.name == "transA" and x.i for x in node.attribute)
        return n * (a[0] if trans else a[-1]) if a else n
    return 0.05 * n


class FakeStats:
    """The fields of bench.LatencyStats that the rewrite reads."""

    def __init__(self, ms: float):
        self.median = ms
        self.spread = 0.0

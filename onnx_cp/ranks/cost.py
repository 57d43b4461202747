"""What a layer costs at a rank, and the whole model's cost: multiply-adds or measured latency.

The target is for the whole model, so the layers that are not rewritten (Convs left alone,
Gemm/MatMul and, for latency, everything else onnxruntime runs) count at their full cost:
``budget for the chosen layers = total / speed-up - fixed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnx_cp.conv import attributes, cp_cost
from onnx_cp.discover import ConvSite
from onnx_cp.splice import build_ranked, placeholder_factors


def rank_cost_macs(site: ConvSite, rank: int) -> int:
    return cp_cost("cp4", site.spec, rank, site.in_shape, site.out_shape, False).macs


def model_macs(model: onnx.ModelProto, sites: Sequence[ConvSite], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-adds per inference of every Conv (known shapes), Gemm and MatMul."""
    total = sum(s.cost.macs for s in sites if s.cost is not None and s.cost.macs is not None)
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2:
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            continue
        k = a[0] if node.op_type == "Gemm" and attributes(node).get("transA", 0) else a[-1]
        total += int(np.prod(out)) * int(k)
    return int(total)


@dataclass
class LatencyModel:
    """Per-layer latency as measured in place: original time, and ``a + b * rank`` for each CP form."""

    total_ms: float
    original_ms: dict[str, float]  # Conv output name -> ms
    affine: dict[str, dict[str, tuple[float, float]]]  # Conv output name -> form -> (a, b)

    def form(self, site: ConvSite, rank: int) -> str:
        """The form that runs fastest at ``rank``."""
        lines = self.affine[site.node.output[0]]
        return min(lines, key=lambda f: lines[f][0] + lines[f][1] * rank)

    def line(self, site: ConvSite, rank: int) -> tuple[float, float]:
        """(a, b) of the fastest form at ``rank``."""
        return self.affine[site.node.output[0]][self.form(site, rank)]

    def cost(self, site: ConvSite, rank: int | None) -> float:
        if rank is None:
            return self.original_ms[site.node.output[0]]
        a, b = self.line(site, rank)
        return max(1e-6, a + b * rank)


# models -> per model (total ms, {Conv output name: ms})
Profiler = Callable[[Sequence[onnx.ModelProto]], list[tuple[float, dict[str, float]]]]


def onnxruntime_profiler(threads: int, opt_level: str, shapes: Mapping[str, tuple[int, ...]],
                         warmup: int = 2, runs: int = 10) -> Profiler:
    def measure(models):
        from onnx_cp.bench import profile_outputs

        return profile_outputs(list(models), threads=threads, warmup=warmup, runs=runs, input_shapes=shapes,
                               opt_level=opt_level)

    return measure


def measure_latency_model(model: onnx.ModelProto, sites: Sequence[ConvSite], low: Mapping[str, int],
                          high: Mapping[str, int], profiler: Profiler, forms: Sequence[str] = ("cp4",)) -> LatencyModel:
    """Profile the model as it is, and with every site in each of ``forms`` at its ``low`` rank
    and at its ``high`` rank.

    The variants get placeholder factors: time does not depend on the values.
    """
    def variant(ranks: Mapping[str, int], form: str) -> onnx.ModelProto:
        return build_ranked(model, [(s, ranks[s.key], placeholder_factors(s, ranks[s.key])) for s in sites], form)

    (total, base), *timed = profiler([model] + [variant(ranks, f) for f in forms for ranks in (low, high)])
    original, affine = {}, {}
    for site in sites:
        out = site.node.output[0]
        original[out] = base.get(out, 0.0)
        r0, r1 = low[site.key], high[site.key]
        affine[out] = {}
        for k, form in enumerate(forms):
            t0, t1 = timed[2 * k][1].get(out, 0.0), timed[2 * k + 1][1].get(out, 0.0)
            slope = max(0.0, (t1 - t0) / (r1 - r0)) if r1 != r0 else 0.0
            affine[out][form] = (max(0.0, t0 - slope * r0), slope)
    return LatencyModel(total, original, affine)

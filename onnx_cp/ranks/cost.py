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

from onnx_cp import decompositions
from onnx_cp.conv import attributes, cp_cost
from onnx_cp.discover import ConvSite
from onnx_cp.realize import REALIZATIONS
from onnx_cp.splice import Replacement, placeholder_factors, splice


def rank_cost_macs(site: ConvSite, rank: int) -> int:
    return cp_cost("cp4", site.spec, rank, site.in_shape, site.out_shape, False).macs


def option_macs(site: ConvSite, decomposition: str, rank) -> int:
    """Multiply-adds of ``decomposition``'s first form at ``rank`` (cp: cp4, as ``rank_cost_macs``)."""
    if decomposition == "cp":
        return rank_cost_macs(site, rank)
    d = decompositions.get(decomposition)
    return d.cost(d.forms[0], site.spec, rank, site.in_shape, site.out_shape, False).macs


def size(site: ConvSite, form: str, rank) -> float:
    """Where a form's latency line is drawn: a CP form's rank, another form's multiply-adds (a
    Tucker-2 core grows with the square of its rank, while its time follows its work)."""
    if form in REALIZATIONS:
        return float(rank)
    return float(decompositions.for_form(form).cost(form, site.spec, rank, site.in_shape, site.out_shape,
                                                    False).macs)


def model_macs(model: onnx.ModelProto, sites: Sequence[ConvSite], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-adds per inference of every Conv (known shapes), Gemm and MatMul (each once: a
    Gemm or MatMul among ``sites`` counts there)."""
    total = sum(s.cost.macs for s in sites if s.cost is not None and s.cost.macs is not None)
    counted = {s.key for s in sites if s.op_type in ("Gemm", "MatMul") and s.cost is not None
               and s.cost.macs is not None}
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.output[0] in counted:
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            continue
        k = a[0] if node.op_type == "Gemm" and attributes(node).get("transA", 0) else a[-1]
        total += int(np.prod(out)) * int(k)
    return int(total)


@dataclass
class LatencyModel:
    """Per-layer latency as measured in place: original time, and ``a + b * x`` for each form,
    x its rank for a CP form, its multiply-adds for another (``size``)."""

    total_ms: float
    original_ms: dict[str, float]  # Conv output name -> ms
    affine: dict[str, dict[str, tuple[float, float]]]  # Conv output name -> form -> (a, b)

    def form(self, site: ConvSite, rank: int) -> str:
        """The CP form that runs fastest at ``rank``."""
        lines = {f: line for f, line in self.affine[site.node.output[0]].items() if f in REALIZATIONS}
        return min(lines, key=lambda f: lines[f][0] + lines[f][1] * rank)

    def form_cost(self, site: ConvSite, form: str, rank) -> float:
        a, b = self.affine[site.node.output[0]][form]
        return max(1e-6, a + b * size(site, form, rank))

    def option_form(self, site: ConvSite, decomposition: str, rank) -> str:
        """``decomposition``'s form that runs fastest at ``rank`` (among those measured)."""
        if decomposition == "cp":
            return self.form(site, rank)
        lines = self.affine[site.node.output[0]]
        return min((f for f in decompositions.get(decomposition).forms if f in lines),
                   key=lambda f: self.form_cost(site, f, rank))

    def option_cost(self, site: ConvSite, decomposition: str, rank) -> float:
        """The time of ``decomposition`` at ``rank`` in its fastest form (cp: as ``cost``)."""
        if decomposition == "cp":
            return self.cost(site, rank)
        return self.form_cost(site, self.option_form(site, decomposition, rank), rank)

    def line(self, site: ConvSite, rank: int) -> tuple[float, float]:
        """(a, b) of the fastest form at ``rank``."""
        return self.affine[site.node.output[0]][self.form(site, rank)]

    def cost(self, site: ConvSite, rank: int | None) -> float:
        if rank is None:
            return self.original_ms[site.node.output[0]]
        return self.form_cost(site, self.form(site, rank), rank)


# models -> per model (total ms, {Conv output name: ms})
Profiler = Callable[[Sequence[onnx.ModelProto]], list[tuple[float, dict[str, float]]]]


def onnxruntime_profiler(threads: int, opt_level: str, shapes: Mapping[str, tuple[int, ...]],
                         warmup: int = 2, runs: int = 10) -> Profiler:
    def measure(models):
        from onnx_cp.bench import profile_outputs

        return profile_outputs(list(models), threads=threads, warmup=warmup, runs=runs, input_shapes=shapes,
                               opt_level=opt_level)

    return measure


# One site's forms to time: (form, low rank, high rank) each, in the decomposition's rank.
Probe = tuple[ConvSite, Sequence[tuple[str, object, object]]]


def measure_latency_model(model: onnx.ModelProto, sites: Sequence[ConvSite], low: Mapping[str, int],
                          high: Mapping[str, int], profiler: Profiler, forms: Sequence[str] = ("cp4",)) -> LatencyModel:
    """Profile the model as it is, and with every site in each of ``forms`` at its ``low`` rank
    and at its ``high`` rank.

    The variants get placeholder factors: time does not depend on the values.
    """
    return measure_probes(model, [(s, [(f, low[s.key], high[s.key]) for f in forms]) for s in sites], profiler)


def measure_probes(model: onnx.ModelProto, probes: Sequence[Probe], profiler: Profiler) -> LatencyModel:
    """Profile the model as it is, then two variants per slot: the i-th slot puts every site in
    its i-th form, at that form's low rank and then at its high rank (a site with fewer forms stays
    a Conv there), placeholder factors throughout."""
    slots = max((len(forms) for _, forms in probes), default=0)

    def variant(slot: int, end: int) -> onnx.ModelProto:
        chosen = [(site, forms[slot][0], forms[slot][1 + end]) for site, forms in probes if slot < len(forms)]
        return splice(model, [Replacement(site, form, rank, placeholder_factors(site, rank, form=form))
                              for site, form, rank in chosen])[0]

    (total, base), *timed = profiler([model] + [variant(slot, end) for slot in range(slots) for end in (0, 1)])
    original, affine = {}, {}
    for site, forms in probes:
        out = site.node.output[0]
        original[out] = base.get(out, 0.0)
        affine[out] = {}
        for k, (form, r0, r1) in enumerate(forms):
            x0, x1 = size(site, form, r0), size(site, form, r1)
            t0, t1 = timed[2 * k][1].get(out, 0.0), timed[2 * k + 1][1].get(out, 0.0)
            slope = max(0.0, (t1 - t0) / (x1 - x0)) if x1 != x0 else 0.0
            affine[out][form] = (max(0.0, t0 - slope * x0), slope)
    return LatencyModel(total, original, affine)

"""What a layer costs at a rank, and the whole model's cost: multiply-adds or measured latency.

The target is for the whole model, so the layers that are not rewritten (Convs left alone,
Gemm/MatMul and, for latency, everything else onnxruntime runs) count at their full cost:
``budget for the chosen layers = total / speed-up - fixed``. Latency is modelled per form as a
line in the form's multiply-adds, one unit for every decomposition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnx_cp import decompositions
from onnx_cp.conv import attributes
from onnx_cp.sites import Site


def option_macs(site: Site, decomposition: str, rank) -> int:
    """Multiply-adds of ``decomposition``'s first form at ``rank``."""
    d = decompositions.get(decomposition)
    return d.cost(d.forms[0], site.spec, rank, site.in_shape, site.out_shape, False).macs


def form_macs(site: Site, form: str, rank) -> float:
    """Where a form's latency line is drawn: its multiply-adds at ``rank``."""
    return float(decompositions.for_form(form).cost(form, site.spec, rank, site.in_shape, site.out_shape, False).macs)


def model_macs(model: onnx.ModelProto, sites: Sequence[Site], shapes: Mapping[str, tuple[int, ...]]) -> int:
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
    """Per-layer latency as measured in place: the original's time, and ``a + b * macs`` for
    each form measured there (``form_macs``)."""

    total_ms: float
    original_ms: dict[str, float]  # layer output name -> ms
    affine: dict[str, dict[str, tuple[float, float]]]  # layer output name -> form -> (a, b)

    def form_cost(self, site: Site, form: str, rank) -> float:
        a, b = self.affine[site.node.output[0]][form]
        return max(1e-6, a + b * form_macs(site, form, rank))

    def option_form(self, site: Site, decomposition: str, rank) -> str:
        """``decomposition``'s form that runs fastest at ``rank`` (among those measured)."""
        lines = self.affine[site.node.output[0]]
        return min((f for f in decompositions.get(decomposition).forms if f in lines),
                   key=lambda f: self.form_cost(site, f, rank))

    def option_cost(self, site: Site, decomposition: str, rank) -> float:
        """The time of ``decomposition`` at ``rank`` in its fastest form."""
        return self.form_cost(site, self.option_form(site, decomposition, rank), rank)

    def cost(self, site: Site, decomposition: str | None = None, rank=None) -> float:
        """The layer's time as it is (``rank`` None), else as ``option_cost``."""
        if rank is None:
            return self.original_ms[site.node.output[0]]
        return self.option_cost(site, decomposition, rank)

    def share_line(self, site: Site, decomposition: str, rank, full: float) -> tuple[float, float]:
        """(offset, slope) against the share of ``full`` multiply-adds, of the form fastest at ``rank``."""
        a, b = self.affine[site.node.output[0]][self.option_form(site, decomposition, rank)]
        return a, b * full


# One site's forms to time: (form, low rank, high rank) each, in the decomposition's rank.
Probe = tuple[Site, Sequence[tuple[str, object, object]]]


def measure_probes(model: onnx.ModelProto, probes: Sequence[Probe], measurement, finish=None) -> LatencyModel:
    """Time the model as it is, then two variants per slot: the i-th slot puts every site in
    its i-th form, at that form's low rank and then at its high rank (a site with fewer forms stays
    as it is there), placeholder factors throughout (``measurement``: a measure.Measurement).
    With ``finish``, every model is timed in the form it makes (quantize='int8': in INT8)."""
    slots = max((len(forms) for _, forms in probes), default=0)
    variants = [[(site, forms[slot][0], forms[slot][1 + end]) for site, forms in probes if slot < len(forms)]
                for slot in range(slots) for end in (0, 1)]
    (profiled, base), *timed = measurement.profile_variants(model, variants, finish)
    total = measurement.whole([finish(model) if finish else model])[0].median
    # the layers' profiled times at the scale of the whole-model time: the time no layer can save
    # is the whole time less theirs, and profiled runs are slower. Unscaled, on a CNN + LSTM
    # captcha reader that rest came out at 0 to 3% of the model where the profile showed 10% or
    # more, and the search's allocations timed 0.64 to 0.81 of the speed-ups it predicted; scaled,
    # 0.90 to 1.23 in five runs (16 of 18 allocations; the slowest of two runs, 0.73 and 0.76).
    scale = total / profiled if profiled else 1.0
    original, affine = {}, {}
    for site, forms in probes:
        out = site.node.output[0]
        original[out] = scale * base.get(out, 0.0)
        affine[out] = {}
        for k, (form, r0, r1) in enumerate(forms):
            x0, x1 = form_macs(site, form, r0), form_macs(site, form, r1)
            t0, t1 = (scale * timed[2 * k][1].get(out, 0.0), scale * timed[2 * k + 1][1].get(out, 0.0))
            slope = max(0.0, (t1 - t0) / (x1 - x0)) if x1 != x0 else 0.0
            affine[out][form] = (max(0.0, t0 - slope * x0), slope)
    return LatencyModel(total, original, affine)


"""The latency probe of a budget selection: every automatic layer timed in place at two ranks of
each form it may take, placeholder factors throughout, and the share of its cost each layer may
keep for the target (a measured --target-speedup); with --decomposition auto, every option's
latency scaled so the cheapest candidates' prediction lands on their measured time."""
from __future__ import annotations

import numpy as np

from onnx_cp import decompositions
from onnx_cp.progress import Progress
from onnx_cp.ranks.cost import LatencyModel, form_macs, measure_probes
from onnx_cp.ranks.grid import SHARE_RANGE, on_lattice, rank_at
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem


def latency_share(problem: BudgetProblem, share: float, progress: Progress | None) -> float:
    """The share of their cost at which every automatic layer's options, timed with placeholder
    factors, make the whole model ``target_speedup`` faster, on the lattice of ``SHARE_STEP``
    (the latency model is kept on the problem for the costs)."""
    align = problem.config.align_rank
    probes = {}
    for l in problem.auto:
        for kind in l.decompositions:
            d = decompositions.get(kind)
            if d.count_ranked and not problem.mixed:
                probes[l.site.key, kind] = (max(1, int(0.02 * l.cap)), max(2, int(share * l.cap)))
            elif d.count_ranked:
                probes[l.site.key, kind] = (max(1, align(int(share * SHARE_RANGE[0] * l.cap))),
                                            max(2, align(int(share * l.cap))))
            else:  # the ends of its candidates' range: every form has a fixed cost too, and a rank far
                # below the candidates' (2% of the Conv) lands off onnxruntime's NCHWc blocks
                low = rank_at(l.site, kind, share * SHARE_RANGE[0], align) or d.concrete(1, l.site.spec)
                probes[l.site.key, kind] = (low, rank_at(l.site, kind, share, align) or low)
    timing = latency_model(problem, probes, progress)
    target = timing.total_ms / problem.float_speedup
    auto_before = sum(timing.cost(l.site) for l in problem.auto)
    lines = [_share_line(timing, l, share, probes) for l in problem.auto]
    offsets = sum(a for a, _ in lines)
    slopes = sum(b for _, b in lines)
    rest = timing.total_ms - auto_before + sum(
        timing.cost(s, problem.ruled_kind(s), problem.plan.choices[s.key].rank) - timing.cost(s)
        for s in problem.ruled)
    if slopes <= 0:
        return share
    share = float(np.clip((target - rest - offsets) / slopes, 0.01, 1.0))
    return float(np.clip(on_lattice(share), 0.01, 1.0))


def _share_line(timing: LatencyModel, layer: BudgetLayer, share: float, probes: dict) -> tuple[float, float]:
    """(offset, slope) of the layer's time against the share of its cost it keeps, for the option
    fastest at ``share``: a count-ranked form's line over its cap, another's over the Conv's
    multiply-adds."""
    best = None
    for kind in layer.decompositions:
        high = probes[layer.site.key, kind][1]
        form = timing.option_form(layer.site, kind, high)
        a, b = timing.affine[layer.site.node.output[0]][form]
        full = form_macs(layer.site, form, layer.cap) if decompositions.get(kind).count_ranked \
            else float(layer.site.cost.macs)
        line = (a, b * full)
        if best is None or line[0] + line[1] * share < best[0] + best[1] * share:
            best = line
    return best


def latency_model(problem: BudgetProblem, probes: dict, progress: Progress | None) -> LatencyModel:
    """Per-layer latency of the model with every automatic layer's options at a low and a high
    rank (``probes``: (site key, decomposition) -> (low, high)), each in every form the rewrite
    may give it; the ruled layers at their ranks."""
    config, plan = problem.config, problem.plan
    if progress:
        progress("latency probe: timing the layers' forms in onnxruntime", 0, 1)
    slots = []
    for l in problem.auto:
        forms = []
        # count-ranked last: the first slot then times every layer in a dense form (Tucker-2 beside
        # SVD), as onnxruntime's NCHWc layout runs them through; CP's depthwise stages leave it,
        # and the layout conversions that costs land on the neighbouring layers' times
        for kind in sorted(l.decompositions, key=lambda k: decompositions.get(k).count_ranked):
            low, high = probes[l.site.key, kind]
            forms += [(f, low, high) for f in decompositions.get(kind).forms_for(config.realize)]
        slots.append((l.site, forms))
    for s in problem.ruled:
        rank = plan.choices[s.key].rank
        slots.append((s, [(f, rank, rank) for f in decompositions.get(problem.ruled_kind(s)).forms_for(config.realize)]))
    problem.latency = measure_probes(problem.model, slots, problem.measurement, problem.timed_form)
    return problem.latency


def scale_to_measured(problem: BudgetProblem, progress: Progress | None) -> None:
    """--decomposition auto: time the model with every layer at its cheapest option against the
    input, and scale every option's latency by what puts the lines' prediction on that measure.

    Each layer's lines come from probes with every other layer rewritten too, and their offsets
    carry what a decomposed form costs besides its work (more nodes, layout conversions); on
    nudenet at its smallest candidates the lines predicted 1.87x where CP-only's measured rounds
    reached 2.1x. The scale lets the target's reach be judged on a measurement, and the measured
    rounds that follow correct the budget as for CP."""
    picks = [min(range(len(l.costs) + 1), key=lambda k: l.options()[0][k]) for l in problem.auto]
    if all(k == len(l.ranks) for l, k in zip(problem.auto, picks)):
        return
    if progress:
        progress("latency probe: timing the cheapest candidates together", 0, 1)
    placed = [(l.site, problem.form(l.site, l.ranks[k], l.kind(k)), l.ranks[k])
              for l, k in zip(problem.auto, picks) if k < len(l.ranks)]
    measurement = problem.measurement
    base, new = measurement.whole([problem.timed(problem.model), problem.timed(measurement.variant(problem.model, placed))])
    measured = base.median / new.median
    rewritten = sum(l.costs[k] for l, k in zip(problem.auto, picks) if k < len(l.ranks))
    kept = problem.fixed + sum(l.before for l, k in zip(problem.auto, picks) if k == len(l.ranks))
    scale = float(np.clip((problem.total / measured - kept) / rewritten, 0.25, 4.0)) if rewritten > 0 else 1.0
    for layer in problem.auto:
        layer.costs = [c * scale for c in layer.costs]
    problem.plan.summary.latency_scale = scale

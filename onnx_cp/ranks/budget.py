"""Ranks under a budget (--target-speedup, --budget-macs): curves, a data-aware proxy, an allocation.

The steps share one ``BudgetProblem``:

1. candidates: a few ranks per layer around the share of its cost the target leaves it;
2. costs: each candidate's cost (multiply-adds, or latency measured with placeholder factors),
   the fixed rest of the model, the target; an unreachable target fails here, before any fit;
3. curves: every candidate fitted briefly (``CURVE_ITERATIONS``) in worker processes: enough to
   rank the options against each other, not to ship;
4. damages: each candidate's error at the layer's output on calibration inputs, weighted by how
   much of it reaches the model's outputs;
5. allocation: the best of the knapsack, uniform-error and uniform-rank starts (refined by
   optuna with --search), re-allocated when the measured speed-up misses the target;
6. final fits: only the kept candidates are fitted in full, each going on from its quick fit.

With ``--decomposition auto`` a layer's candidates span several decompositions (``BudgetLayer.kinds``):
CP and Tucker-2 for a k x k Conv, truncated SVD for a 1x1 Conv, a Gemm or a MatMul. Each is
costed by the same latency model (its own forms timed at two ranks), damaged by the same proxy,
and allocated by the same knapsack; an SVD curve is exact at every rank, so it is never refitted.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import onnx

from onnx_cp import decompositions
from onnx_cp.conv import Cost, align_rank
from onnx_cp.decompose import Fitter
from onnx_cp.discover import ConvSite
from onnx_cp.errors import OnnxCpError, shape_param
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import Progress, staged
from onnx_cp.ranks import cost as costs
from onnx_cp.ranks import proxy
from onnx_cp.ranks.allocate import allocate, uniform_error
from onnx_cp.ranks.calibration import load_calibration
from onnx_cp.ranks.fitting import LayerFit
from onnx_cp.ranks.selection import LayerChoice, MeasuredRound, RankPlan
from onnx_cp.realize import REALIZATIONS
from onnx_cp.splice import Replacement, placeholder_factors, splice

# NLS iterations of a curve fit. On a trained VGG-16 512x512x3x3 kernel, 10 iterations from the
# SVD start reach 0.62 relative error at rank 240 where the full fit ends at 0.59: the curves
# only have to order options, and the kept ones are fitted in full afterwards.
CURVE_ITERATIONS = 10
# Candidate ranks span this range of the share of its multiply-adds a layer may keep. Measured
# CP forms run below their multiply-add count's speed (depthwise stages are memory-bound), so
# re-allocation rounds move down more often than up; the top stays low because fit time grows
# with the rank (a 512x512x3x3 kernel at rank 1145 costs 16 s per iteration).
SHARE_RANGE = (1 / 3, 1.5)
# Curve fits per model at least: a model with fewer layers gets more candidates per layer
# than ``RankSelection.candidates``.
CURVE_FITS = 24
# A kept candidate's full fit iterates on from its quick fit for at most this many times the quick
# fit's time (its degeneracy correction comes on top, as always). On VGG-16 at --target-speedup 3,
# unbounded final fits took 445 of 690 s and lowered the calibration output error only from
# 0.0100 to 0.0088, and at 2x they still took 70 of 178 s. Its 512x512x3x3 layer at rank 592:
# quick fit 0.354 relative error in 6 s; 1.5x: 0.317 in 21 s, 3x: 0.312 in 39 s (correction included); tools/final_fit_budget.py).
FINAL_FIT_FACTOR = 1.0
# The decompositions a layer may take under --decomposition auto with a budget, in order of
# preference: CP and Tucker-2 where CP applies (k x k kernels), else SVD (1x1 kernels, Gemm, MatMul).
SPATIAL = ("cp", "tucker2")
POINTWISE = ("svd",)


def budget_decompositions(site: ConvSite, decomposition: str) -> tuple[str, ...]:
    """The decompositions whose candidates a layer gets: cp alone unless ``decomposition`` is auto."""
    if decomposition != "auto":
        return ("cp",)
    spec = site.spec
    if decompositions.get("cp").applies(spec) is None:
        return tuple(d for d in SPATIAL if decompositions.get(d).applies(spec) is None)
    return tuple(d for d in POINTWISE if decompositions.get(d).applies(spec) is None)


@dataclass
class BudgetLayer:
    """One automatically ranked layer: its candidates and their curves."""

    site: ConvSite
    groups: list[np.ndarray]
    cap: int  # CP's (0 when the layer has no CP candidates)
    before: float  # cost of the Conv as it is
    ranks: list = field(default_factory=list)  # per candidate, its decomposition's rank (tucker2: a pair)
    fits: list = field(default_factory=list)  # LayerFit (cp) or decompositions.Factors
    costs: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # layer output error per rank
    weight: float = 1.0  # sensitivity of the final outputs to this layer's output error
    uniform: int = 0  # this layer's rank in the one-rank-for-all allocation
    weights: object = None  # per group, the data-aware weighting of its fits (calibrate.GroupWeights)
    decompositions: tuple[str, ...] = ("cp",)  # what the candidates may be
    kinds: list[str] = field(default_factory=list)  # per candidate, its decomposition (empty: all cp)

    def options(self) -> tuple[list[float], list[float]]:
        """Costs and damages of every option: each candidate rank, then the Conv kept as it is."""
        return self.costs + [self.before], [self.weight * e * e for e in self.errors] + [0.0]

    def kind(self, k: int) -> str:
        return self.kinds[k] if self.kinds else "cp"

    def factors(self, k: int) -> list[tuple[np.ndarray, ...]]:
        fit = self.fits[k]
        return [f.factors for f in fit.fits] if isinstance(fit, LayerFit) else list(fit.groups)

    def chosen(self, k: int):
        """(site, rank, per-group factors) of option ``k``, or None when it keeps the Conv."""
        return None if k == len(self.ranks) else (self.site, self.ranks[k], self.factors(k))

    def label(self, k: int):
        """Candidate ``k`` in a message or a search space: a CP rank as it is, another as 'svd:16'."""
        kind, rank = self.kind(k), self.ranks[k]
        return rank if kind == "cp" else f"{kind}:{'x'.join(map(str, rank)) if isinstance(rank, tuple) else rank}"

    def uniform_index(self) -> int:
        """The candidate of the one-rank-for-all allocation (the first decomposition's)."""
        first = self.kind(0)
        return next(k for k, r in enumerate(self.ranks) if r == self.uniform and self.kind(k) == first)

    @property
    def stats(self):
        """Per group, the input-channel covariance behind the data-aware weighting (svd and tucker2
        fit the layer's output with it), or None."""
        if not self.weights:
            return None
        modes = [w.modes[1] for w in self.weights]
        return None if any(m is None for m in modes) else [a @ a for a, _ in modes]


@dataclass
class BudgetProblem:
    """Everything the steps share: the model, the layers, the cost unit, the target."""

    model: onnx.ModelProto
    sites: list[ConvSite]
    shapes: dict  # tensor name -> shape, as inferred
    auto: list[BudgetLayer]
    ruled: list[ConvSite]  # layers whose rank a --rank rule fixes (already fitted)
    plan: RankPlan
    config: object  # RewriteConfig
    fitter: Fitter | None = None  # tests replace the solver
    unit_cost: Callable[[ConvSite, int | None], float] | None = None
    total: float = 0.0
    fixed: float = 0.0
    target: float = 0.0
    feeds: list = field(default_factory=list)
    reference: list = field(default_factory=list)
    latency: costs.LatencyModel | None = None  # per-layer latency, once measured

    @functools.cached_property
    def model_macs(self) -> float:
        """Multiply-adds of the whole model as it is."""
        return float(costs.model_macs(self.model, self.sites, self.shapes))

    @property
    def selection(self):
        return self.config.selection

    def ruled_layers(self) -> list:
        choices = self.plan.choices
        return [(s, choices[s.key].rank, [f.factors for f in choices[s.key].fit.fits]) for s in self.ruled]

    @property
    def forms(self) -> tuple[str, ...]:
        """The CP forms the rewrite may give a layer: both when it times them (realize auto)."""
        return REALIZATIONS if self.config.realize not in REALIZATIONS else (self.config.realize,)

    def form(self, site: ConvSite, rank, kind: str = "cp") -> str:
        """The form the rewrite will likely choose: the faster at ``rank`` by the latency model."""
        if kind != "cp":
            own = decompositions.get(kind).forms
            return self.latency.option_form(site, kind, rank) if self.latency is not None else own[0]
        return self.latency.form(site, rank) if self.latency is not None else self.forms[0]

    def variant(self, picks: list[int]) -> onnx.ModelProto:
        """The model with the picked ranks, each layer in its likely form, so that a measured
        round times what the rewrite will build."""
        chosen = [(l.kind(k),) + l.chosen(k) for l, k in zip(self.auto, picks) if k < len(l.ranks)]
        chosen += [("cp",) + c for c in self.ruled_layers()]
        return splice(self.model, [Replacement(site, self.form(site, rank, kind), rank, factors)
                                   for kind, site, rank, factors in chosen])[0]

    @property
    def threads(self) -> int:
        """Threads for the proxy's onnxruntime runs: every core (they are computed, not timed)."""
        return self.config.worker_count()

    def output_error(self, picks: list[int]) -> float:
        return proxy.output_error(proxy.run(self.variant(picks), self.feeds, self.threads), self.reference)

    def options(self) -> list[tuple[list[float], list[float]]]:
        return [l.options() for l in self.auto]

    def spent(self, picks: list[int]) -> float:
        return self.fixed + sum(o[0][k] for o, k in zip(self.options(), picks))


def by_budget(plan: RankPlan, model, sites, shapes, auto: list[BudgetLayer], ruled: list[ConvSite], config,
              fitter: Fitter | None, progress: Progress | None) -> None:
    """Fill ``plan`` with a rank (or the Conv kept) for every layer of ``auto``."""
    problem = BudgetProblem(model, sites, shapes, auto, ruled, plan, config, fitter)
    selection = config.selection
    plan.summary.cost = selection.cost
    seconds = plan.summary.seconds
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    _check_shapes(problem)
    _candidates(problem, progress)
    _costs(problem, progress)
    lap("costs")
    _calibrate(problem)
    _fit_curves(problem, progress)
    lap("curves")
    _damages(problem, progress)
    lap("damages")
    picks = _allocate(problem, problem.target - problem.fixed, progress)
    if selection.target_speedup and selection.measure:
        picks = _meet_measured(problem, picks, progress)
    lap("allocation")
    _fit_kept(problem, picks, progress)
    lap("final fits")
    _record(problem, picks)


def _check_shapes(problem: BudgetProblem) -> None:
    selection = problem.selection
    if not problem.auto:
        raise OnnxCpError(f"{selection.describe()}: no selected layer is left for automatic ranks")
    unknown = [s.name for s in [l.site for l in problem.auto] + problem.ruled
               if s.in_shape is None or s.out_shape is None]
    if unknown:
        raise OnnxCpError(f"{selection.describe()} needs every layer's shapes, and {unknown[0]}'s are unknown; "
                          f"fix the input's dynamic dimensions with {shape_param('NAME', '1x3x224x224')}")


def candidate_ranks(cap: int, share: float, count: int,
                    align: Callable[[int], int] = align_rank, upto: float = 0.0) -> list[int]:
    """About ``count`` ranks over ``SHARE_RANGE`` times ``share`` of the cap (up to ``upto`` of
    it when that is higher), each passed through ``align`` (by default the rewrite's rounding to
    onnxruntime's NCHWc blocks, ``conv.align_rank``)."""
    lo = max(share * SHARE_RANGE[0], 1.0 / cap)
    hi = min(1.0, max(share * SHARE_RANGE[1], upto, 2.0 / cap))
    fractions = np.geomspace(lo, hi, count) if hi > lo else [hi]
    return sorted({max(1, align(min(cap, max(1, int(round(f * cap)))))) for f in fractions})


def uniform_rank(auto: list[BudgetLayer], budget_macs: float) -> int:
    """The largest single rank (capped per layer) whose CP forms fit ``budget_macs``."""
    lo, hi = 1, max(l.cap for l in auto)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(costs.rank_cost_macs(l.site, min(mid, l.cap)) for l in auto) <= budget_macs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _candidates(problem: BudgetProblem, progress: Progress | None) -> None:
    """The average share of its cap each automatic layer may keep, and each layer's candidate
    ranks around it (the uniform-rank allocation is always one of them).

    The share comes from multiply-adds, except that a measured --target-speedup takes it from
    latency: CP forms run well below their multiply-add count's speed (on VGG-16, a third of the
    multiply-adds gave nowhere near 3x), and fitting the ranks that multiply-adds suggest would
    spend minutes on candidates the measurement then throws away. Where latency gives the smaller
    share, the candidates still reach up to the multiply-add share: a latency line drawn through
    two probes can be far off at low ranks (MNIST's 32->64 5x5 layer at batch 64 measured 1 ms at
    rank 8 where its line said 2), and the measured rounds can only re-allocate among candidates."""
    selection, config = problem.selection, problem.config
    share = macs = _macs_share(problem)
    if selection.target_speedup and (selection.measure or selection.cost == "latency"):
        share = _latency_share(problem, share, progress)
    # Few layers make curve fits cheap and coarse grids costly: a measured round can only move
    # between candidates (charcnn36 at --target-speedup 5 --calib: 4 candidates kept features.3
    # at rank 48, 90.1% of held-out crops; 8 reached rank 64, 91.6%, measured 4.87x).
    count = max(selection.candidates, math.ceil(CURVE_FITS / len(problem.auto)))
    with_cp = [l for l in problem.auto if "cp" in l.decompositions]
    uniform = uniform_rank(with_cp, share * sum(float(l.site.cost.macs) for l in with_cp)) if with_cp else 1
    for layer in problem.auto:
        ranks, kinds = [], []
        for kind in layer.decompositions:
            if kind == "cp":
                grid = candidate_ranks(layer.cap, share, count, config.align_rank, upto=macs)
                layer.uniform = max(1, config.align_rank(min(uniform, layer.cap)))
                found = sorted(set(grid) | {layer.uniform})
                if len(layer.decompositions) > 1:  # auto: Tucker-2 covers the costly end
                    top = max(1, config.align_rank(cp_limit(layer.site)))
                    layer.uniform = min(layer.uniform, top)
                    found = sorted({min(r, top) for r in found})
            else:
                found = other_ranks(layer.site, kind, share, count, config.align_rank, upto=macs)
                if not kinds:  # the uniform allocation's candidate: the rank at the common share
                    layer.uniform = rank_at(layer.site, kind, share, config.align_rank) or found[0]
                    found = sorted(set(found) | {layer.uniform}, key=_order)
            ranks += found
            kinds += [kind] * len(found)
        layer.ranks = ranks
        layer.kinds = kinds if layer.decompositions != ("cp",) else []


def cp_limit(site: ConvSite) -> int:
    """The highest CP rank ``--decomposition auto`` fits for a layer that Tucker-2 can also take:
    the larger channel count of a group. A CP fit's time grows with the cube of its rank (a
    512x512x3x3 kernel at rank 1145: 16 s per iteration), and a target that leaves a layer more
    than that has Tucker-2 candidates of the same cost."""
    return max(site.spec.out_per_group, site.spec.in_per_group)


def _order(rank):
    return rank if isinstance(rank, tuple) else (rank,)


def rank_at(site: ConvSite, kind: str, fraction: float, align: Callable[[int], int]):
    """``kind``'s largest rank whose first form costs under ``fraction`` of the Conv's multiply-adds."""
    macs = float(site.cost.macs)
    budget = Cost(int(math.ceil(fraction * macs)) + 1, 1 << 62)
    try:
        return decompositions.get(kind).rank_within(site.spec, site.in_shape, site.out_shape, budget, None, align)
    except OnnxCpError:
        return None


def other_ranks(site: ConvSite, kind: str, share: float, count: int, align: Callable[[int], int] = align_rank,
                upto: float = 0.0) -> list:
    """About ``count`` ranks of ``kind`` (not cp) whose multiply-adds span ``SHARE_RANGE`` times
    ``share`` of the Conv's (up to ``upto`` of them when that is higher), as ``candidate_ranks``
    spans CP's cap; at least the smallest rank."""
    found = ranks_between(site, kind, max(share * SHARE_RANGE[0], 1e-3),
                          min(1.0, max(share * SHARE_RANGE[1], upto)), count, align)
    return found or [decompositions.get(kind).concrete(1, site.spec)]


def ranks_between(site: ConvSite, kind: str, lo: float, hi: float, count: int,
                  align: Callable[[int], int] = align_rank) -> list:
    """The distinct ranks of ``kind`` (not cp) at about ``count`` shares of the Conv's
    multiply-adds, geometric from ``lo`` to ``hi``, cheapest first."""
    fractions = np.geomspace(lo, hi, count) if hi > lo else [hi]
    found = {r for r in (rank_at(site, kind, float(f), align) for f in fractions) if r is not None}
    return sorted(found, key=_order)


def _macs_share(problem: BudgetProblem) -> float:
    selection, plan = problem.selection, problem.plan
    total = problem.model_macs
    before = sum(l.before for l in problem.auto)
    others = total - before - sum(s.cost.macs or 0 for s in problem.ruled) + sum(
        costs.rank_cost_macs(s, plan.choices[s.key].rank) for s in problem.ruled)
    target = total / selection.target_speedup if selection.target_speedup else float(selection.budget_macs)
    return float(np.clip((target - others) / before, 0.02, 1.0)) if before else 1.0


def _latency_share(problem: BudgetProblem, share: float, progress: Progress | None) -> float:
    """The share of the cap at which every automatic layer's CP form, timed with placeholder
    factors, makes the whole model ``target_speedup`` faster (the latency model is kept for
    ``_costs``)."""
    align = problem.config.align_rank
    mixed = any(l.decompositions != ("cp",) for l in problem.auto)  # --decomposition auto
    probes = {}
    for l in problem.auto:
        for kind in l.decompositions:
            if kind == "cp" and not mixed:
                probes[l.site.key, kind] = (max(1, int(0.02 * l.cap)), max(2, int(share * l.cap)))
            elif kind == "cp":
                probes[l.site.key, kind] = (max(1, align(int(share * SHARE_RANGE[0] * l.cap))),
                                            max(2, align(int(share * l.cap))))
            else:  # the ends of its candidates' range: every form has a fixed cost too, and a rank far
                # below the candidates' (2% of the Conv) lands off onnxruntime's NCHWc blocks
                low = rank_at(l.site, kind, share * SHARE_RANGE[0], align) or \
                    decompositions.get(kind).concrete(1, l.site.spec)
                probes[l.site.key, kind] = (low, rank_at(l.site, kind, share, align) or low)
    timing = _latency_model(problem, probes, progress)
    target = timing.total_ms / problem.selection.target_speedup
    auto_before = sum(timing.cost(l.site, None) for l in problem.auto)
    # each layer's line, against the share, of the option that is fastest at the high probe
    lines = [_share_line(timing, l, share, probes) for l in problem.auto]
    offsets = sum(a for a, _ in lines)
    slopes = sum(b for _, b in lines)
    rest = timing.total_ms - auto_before + sum(
        timing.cost(s, problem.plan.choices[s.key].rank) - timing.cost(s, None) for s in problem.ruled)
    if slopes <= 0:
        return share
    return float(np.clip((target - rest - offsets) / slopes, 0.01, 1.0))


def _share_line(timing: costs.LatencyModel, layer: BudgetLayer, share: float, probes: dict) -> tuple[float, float]:
    """(offset, slope) of the layer's time against the share of its cost it keeps, for the option
    fastest at ``share``: a CP form's line in its rank times the cap, another's in its
    multiply-adds times the Conv's."""
    best = None
    for kind in layer.decompositions:
        high = probes[layer.site.key, kind][1]
        if kind == "cp":
            a, b = timing.line(layer.site, high)
            line = (a, b * layer.cap)
        else:
            a, b = timing.affine[layer.site.node.output[0]][timing.option_form(layer.site, kind, high)]
            line = (a, b * float(layer.site.cost.macs))
        if best is None or line[0] + line[1] * share < best[0] + best[1] * share:
            best = line
    return best


def _latency_model(problem: BudgetProblem, probes: dict, progress: Progress | None) -> costs.LatencyModel:
    """Per-layer latency of the model with every automatic layer's options at a low and a high
    rank (``probes``: (site key, decomposition) -> (low, high)), each in every form the rewrite
    may give it; the ruled layers at their ranks."""
    config, plan = problem.config, problem.plan
    if progress:
        progress("timing layers in onnxruntime", 0, 1)
    profiler = costs.onnxruntime_profiler(config.threads, config.opt_level, config.input_shapes)
    slots = []
    for l in problem.auto:
        forms = []
        # cp last: the first slot then times every layer in a dense form (Tucker-2 beside SVD), as
        # onnxruntime's NCHWc layout runs them through; CP's depthwise stages leave it, and the
        # layout conversions that costs land on the neighbouring layers' times
        for kind in sorted(l.decompositions, key=lambda k: k == "cp"):
            low, high = probes[l.site.key, kind]
            forms += [(f, low, high) for f in (problem.forms if kind == "cp" else decompositions.get(kind).forms)]
        slots.append((l.site, forms))
    for s in problem.ruled:
        rank = plan.choices[s.key].rank
        slots.append((s, [(f, rank, rank) for f in problem.forms]))
    problem.latency = costs.measure_probes(problem.model, slots, profiler)
    return problem.latency


def _costs(problem: BudgetProblem, progress: Progress | None) -> None:
    """Every candidate's cost, the fixed rest and the target; refuses an unreachable target."""
    selection, plan = problem.selection, problem.plan
    auto, ruled = problem.auto, problem.ruled
    # --decomposition auto costs its options by the latency model wherever the selection measured
    # one: multiply-adds say little about how CP's depthwise stages compare with Tucker-2's or an
    # SVD's dense ones in onnxruntime
    by_latency = selection.cost == "latency" or (problem.latency is not None and any(l.kinds for l in auto))
    if not by_latency:
        total = problem.model_macs
        unit_cost = lambda site, rank, kind="cp": float(  # noqa: E731
            site.cost.macs if rank is None else costs.option_macs(site, kind, rank))
    else:
        timing = problem.latency or _latency_model(problem, _span(auto), progress)
        total = timing.total_ms
        unit_cost = lambda site, rank, kind="cp": (  # noqa: E731
            timing.cost(site, None) if rank is None else timing.option_cost(site, kind, rank))
    for layer in auto:
        layer.before = unit_cost(layer.site, None)
        layer.costs = [unit_cost(layer.site, r, layer.kind(k)) for k, r in enumerate(layer.ranks)]
    ruled_delta = sum(unit_cost(s, plan.choices[s.key].rank) - unit_cost(s, None) for s in ruled)
    problem.unit_cost, problem.total = unit_cost, total
    plan.summary.cost = "latency" if by_latency else "macs"
    problem.fixed = total - sum(l.before for l in auto) + ruled_delta
    problem.target = total / selection.target_speedup if selection.target_speedup else float(selection.budget_macs)
    summary = plan.summary
    summary.total_before, summary.fixed, summary.target_total = total, problem.fixed, problem.target
    if by_latency and any(l.kinds for l in auto) and selection.target_speedup and selection.measure:
        _scale_to_measured(problem, progress)
    cheapest = problem.fixed + sum(min(*l.costs, l.before) for l in auto)  # a layer may keep its Conv
    if problem.target < cheapest:
        raise OnnxCpError(
            f"{selection.describe()} is out of reach: the layers not rewritten cost {problem.fixed / total:.0%} of "
            f"the model, so the smallest candidate ranks reach at most {total / cheapest:.2f}x "
            f"({cheapest:.4g} of {total:.4g} {plan.summary.cost}); ask for less or select more layers")


def _scale_to_measured(problem: BudgetProblem, progress: Progress | None) -> None:
    """--decomposition auto: time the model with every layer at its cheapest option against the
    input, and scale every option's latency by what puts the lines' prediction on that measure.

    Each layer's lines come from probes with every other layer rewritten too, and their offsets
    carry what a decomposed form costs besides its work (more nodes, layout conversions); on
    nudenet at its smallest candidates the lines predicted 1.87x where CP-only's measured rounds
    reached 2.1x. The scale lets the target's reach be judged on a measurement, and the measured
    rounds that follow correct the budget as for CP."""
    from onnx_cp.bench import measure_latency

    config = problem.config
    picks = [min(range(len(l.costs) + 1), key=lambda k: l.options()[0][k]) for l in problem.auto]
    if all(k == len(l.ranks) for l, k in zip(problem.auto, picks)):
        return
    if progress:
        progress("measuring the cheapest candidates", 0, 1)
    placeholders = [(l.kind(k), l.site, l.ranks[k]) for l, k in zip(problem.auto, picks) if k < len(l.ranks)]
    forms = [problem.form(site, rank, kind) for kind, site, rank in placeholders]
    variant = splice(problem.model, [Replacement(site, form, rank, placeholder_factors(site, rank, form=form))
                                     for (kind, site, rank), form in zip(placeholders, forms)])[0]
    base, new = measure_latency([problem.model, variant], threads=config.threads, warmup=2, runs=12,
                                input_shapes=dict(config.input_shapes), opt_level=config.opt_level)
    measured = base.median / new.median
    rewritten = sum(l.costs[k] for l, k in zip(problem.auto, picks) if k < len(l.ranks))
    kept = problem.fixed + sum(l.before for l, k in zip(problem.auto, picks) if k == len(l.ranks))
    scale = float(np.clip((problem.total / measured - kept) / rewritten, 0.25, 4.0)) if rewritten > 0 else 1.0
    for layer in problem.auto:
        layer.costs = [c * scale for c in layer.costs]
    problem.plan.summary.latency_scale = scale


def _span(auto: list[BudgetLayer]) -> dict:
    """(site key, decomposition) -> (its lowest candidate rank, its highest)."""
    span = {}
    for l in auto:
        for k, r in enumerate(l.ranks):
            key = (l.site.key, l.kind(k))
            span[key] = (span.get(key, (r, r))[0], r)
    return span


def _calibrate(problem: BudgetProblem) -> None:
    selection, config = problem.selection, problem.config
    feeds, note = load_calibration(problem.model, selection.calib, selection.calib_count, selection.seed,
                                   config.input_shapes)
    if note:
        problem.plan.notes.append(note)
    problem.feeds = feeds
    problem.plan.summary.calibration = {"source": selection.calib or "random", "inputs": len(feeds)}


def _fit_curves(problem: BudgetProblem, progress: Progress | None) -> None:
    """Every candidate of every layer, fitted briefly, in parallel."""
    config = problem.config
    options = replace(config.fit_options(), max_iter=min(config.max_iter, CURVE_ITERATIONS), stabilize="never")
    tasks = [_task(l, (i, k), k, config.seed) for i, l in enumerate(problem.auto) for k in range(len(l.ranks))]
    fits = fit_all(tasks, options, config.worker_count(), staged(progress, "curves"), problem.fitter)
    for i, layer in enumerate(problem.auto):
        layer.fits = [fits[(i, k)] for k in range(len(layer.ranks))]


def _task(layer: BudgetLayer, key, k: int, seed: int, **more) -> FitTask:
    """The fit of candidate ``k``: CP's data-aware weighting, or another decomposition's own fit
    (with the layer's input-channel covariance under --calib)."""
    kind, rank = layer.kind(k), layer.ranks[k]
    if kind == "cp":
        return FitTask(key, f"{layer.site.name} rank {rank}", layer.groups, rank, seed, layer.weights, **more)
    return FitTask(key, f"{layer.site.name} {layer.label(k)}", layer.groups, rank, seed, decomposition=kind,
                   stats=layer.stats)


def _damages(problem: BudgetProblem, progress: Progress | None) -> None:
    """Each candidate's error at its layer's output, and how much of a layer's error reaches the
    model's outputs: (output error / layer error)^2, each layer alone at its middle candidate."""
    model, auto, threads = problem.model, problem.auto, problem.threads
    problem.reference = proxy.run(model, problem.feeds, threads)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    dtype = auto[0].site.weight.value.dtype
    dtype = dtype if dtype in (np.float16, np.float32, np.float64) else np.float32
    got = proxy.capture(model, [t for l in auto for t in (l.site.node.input[0], l.site.node.output[0])],
                        problem.feeds, dtype, threads)
    for k, layer in enumerate(auto):
        if progress:
            progress(f"{layer.site.name} feature-map error", k, 2 * len(auto))
        node = layer.site.node
        weight = np.concatenate([np.asarray(g, dtype=np.float64) for g in layer.groups], axis=0)
        kernels = [_kernel(layer, j) for j in range(len(layer.ranks))]
        layer.errors = proxy.layer_errors(node, weight, kernels, got[node.input[0]], got[node.output[0]],
                                          opset, threads)
    for k, layer in enumerate(auto):
        if progress:
            progress(f"{layer.site.name} sensitivity", len(auto) + k, 2 * len(auto))
        mid = len(layer.ranks) // 2
        if layer.errors[mid] <= 0:
            continue
        form = decompositions.get(layer.kind(mid)).forms[0]
        variant = splice(model, [Replacement(layer.site, form, layer.ranks[mid], layer.factors(mid))])[0]
        out = proxy.output_error(proxy.run(variant, problem.feeds, threads), problem.reference)
        layer.weight = (out / layer.errors[mid]) ** 2


def _kernel(layer: BudgetLayer, k: int) -> np.ndarray:
    """The weight candidate ``k`` rebuilds (groups stacked along the output channels; a Gemm's or
    MatMul's as its (out, in) matrix), by each decomposition's own ``kernels`` (BLAS products)."""
    return np.concatenate(decompositions.get(layer.kind(k)).kernels(layer.factors(k)), axis=0)


def _allocate(problem: BudgetProblem, budget: float, progress: Progress | None) -> list[int]:
    """The best of the knapsack, uniform-error and uniform-rank allocations on the calibration
    inputs, refined by the search when one is asked for."""
    selection, summary = problem.selection, problem.plan.summary
    options = problem.options()
    starts = {name: (problem.output_error(p), p) for name, p in _starts(problem.auto, options, budget).items()}
    summary.starts = {name: value for name, (value, _) in starts.items()}
    summary.greedy_output_error = starts["knapsack"][0]
    best = min(starts.values(), key=lambda vp: vp[0])
    if not selection.search:
        summary.output_error = best[0]
        return best[1]
    from onnx_cp.ranks.refine import refine

    known = {tuple(p): v for v, p in starts.values()}
    picks, value = refine(options, budget, known, problem.output_error, selection.search, selection.seed,
                          progress, storage=selection.storage, study_name=selection.study_name,
                          space=[(l.site.name, [l.label(k) for k in range(len(l.ranks))]) for l in problem.auto])
    summary.search_trials, summary.output_error = selection.search, value
    return picks


def _starts(auto: list[BudgetLayer], options, budget: float) -> dict[str, list[int]]:
    """Allocations within ``budget``: the knapsack on the proxy, --max-error alone (one kernel-error
    bound for all) and one rank for all (moved to cheaper options where it does not fit)."""
    from onnx_cp.ranks.refine import repair

    costs_, damages = [o[0] for o in options], [o[1] for o in options]
    starts = {"knapsack": allocate(costs_, damages, budget)}
    try:
        kernel_errors = [[f.rel_error for f in l.fits] + [0.0] for l in auto]
        starts["uniform error"] = uniform_error(kernel_errors, costs_, budget)
    except OnnxCpError:
        pass
    starts["uniform rank"] = repair([l.uniform_index() for l in auto], options, budget)
    return starts


def _meet_measured(problem: BudgetProblem, picks: list[int], progress: Progress | None) -> list[int]:
    """Time the rewritten model against the original; when the measured speed-up misses the target
    by more than 10%, scale the budget by how far the cost model was off and allocate again.
    Keeps the round whose measured speed-up came closest to the target."""
    from onnx_cp.bench import measure_latency

    config, summary, speedup = problem.config, problem.plan.summary, problem.selection.target_speedup
    rounds, tried = [], []
    count = config.selection.rounds + 1
    for attempt in range(count):
        if progress:
            progress(f"measuring the whole model (round {attempt + 1})", attempt, count)
        base, new = measure_latency([problem.model, problem.variant(picks)], threads=config.threads, warmup=2,
                                    runs=12, input_shapes=dict(config.input_shapes), opt_level=config.opt_level)
        spent = problem.spent(picks)
        measured = base.median / new.median
        rounds.append(MeasuredRound(problem.total / spent, measured, base.median, new.median,
                                    max(base.spread, new.spread), summary.output_error))
        tried.append((abs(math.log(measured / speedup)), attempt, picks))
        if abs(measured / speedup - 1) <= 0.1 or attempt == count - 1:
            break
        # the cost model was off by (predicted / measured): ask it for that much more (or less)
        budget_total = problem.total / speedup * measured / (problem.total / spent)
        try:
            picks = _allocate(problem, budget_total - problem.fixed, progress)
        except OnnxCpError:
            break
    _, best, picks = min(tried, key=lambda t: t[:2])
    summary.rounds, summary.kept_round = rounds, best + 1
    summary.output_error = rounds[best].output_error
    return picks


def _fit_kept(problem: BudgetProblem, picks: list[int], progress: Progress | None) -> None:
    """Fit the kept candidates in full, each going on from its quick curve fit, and measure the
    allocation's output error again with them."""
    config = problem.config
    # CP only: an SVD candidate is exact at its rank already, and HOOI's sweeps past the curve's
    # CURVE_ITERATIONS lower a Tucker-2 fit's error by little (a random 512x512x3x3 kernel at ranks
    # 160: 0.8585 after 5 sweeps, 0.8572 after 100, which took 50 s on one core)
    tasks = [_task(l, i, k, config.seed, init=l.fits[k], iteration_time=max(1.0, FINAL_FIT_FACTOR * l.fits[k].seconds))
             for i, (l, k) in enumerate(zip(problem.auto, picks)) if k < len(l.ranks) and l.kind(k) == "cp"]
    fits = fit_all(tasks, config.fit_options(), config.worker_count(), staged(progress, "fitting"), problem.fitter)
    for i, fit in fits.items():
        layer = problem.auto[i]
        layer.fits[picks[i]] = fit
    if any(k < len(l.ranks) for l, k in zip(problem.auto, picks)):
        problem.plan.summary.final_output_error = problem.output_error(picks)


def _record(problem: BudgetProblem, picks: list[int]) -> None:
    plan, summary = problem.plan, problem.plan.summary
    spent = problem.spent(picks)
    summary.budget, summary.total_after = problem.target - problem.fixed, spent
    summary.predicted_speedup = problem.total / spent
    plan.layers, plan.picks = problem.auto, picks
    kinds: dict[str, int] = {}
    for layer, k in zip(problem.auto, picks):
        if k == len(layer.ranks):
            plan.choices[layer.site.key] = LayerChoice(
                None, requested="auto", reason=f"the allocation keeps this {layer.site.op_type}", cost=layer.before)
        else:
            plan.choices[layer.site.key] = LayerChoice(layer.ranks[k], layer.fits[k], "auto",
                                                       proxy=layer.errors[k], cost=layer.costs[k],
                                                       decomposition=layer.kind(k))
            kinds[layer.kind(k)] = kinds.get(layer.kind(k), 0) + 1
    if any(l.kinds for l in problem.auto):
        summary.decompositions = kinds
    for site in problem.ruled:
        plan.choices[site.key].cost = problem.unit_cost(site, plan.choices[site.key].rank)


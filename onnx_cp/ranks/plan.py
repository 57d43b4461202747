"""Choose a rank for every selected layer: by an error bound, or by a budget and a data-aware proxy.

``plan_ranks`` is all that ``rewrite`` calls; it returns a RankPlan whose fits the rewriter reuses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnx_cp.conv import align_rank
from onnx_cp.discover import ConvSite
from onnx_cp.errors import OnnxCpError
from onnx_cp.ranks import cost as costs
from onnx_cp.ranks import proxy
from onnx_cp.ranks.allocate import allocate, uniform_error
from onnx_cp.ranks.calibration import load_calibration
from onnx_cp.ranks.fitting import LayerFit, WarmFitter, fit_layer
from onnx_cp.ranks.rules import choose_rank, rank_unit_cost
from onnx_cp.ranks.search import smallest_rank
from onnx_cp.splice import build_ranked

Progress = Callable[[str, int, int], None]
LARGE = 256  # --max-error searches such layers in steps of 16 (their ranks are large anyway)


@dataclass
class LayerChoice:
    rank: int | None  # None: keep the Conv
    fit: LayerFit | None = None
    requested: int | float | str | None = None
    capped: bool = False
    reason: str = ""
    proxy: float | None = None  # relative error of the layer's output on the calibration inputs
    cost: float | None = None  # in the plan's cost unit (MACs or ms)


@dataclass
class RankPlan:
    choices: dict[str, LayerChoice]  # ConvSite.key -> choice
    summary: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    measured_variant: onnx.ModelProto | None = None
    layers: list = field(default_factory=list)  # budget modes: every automatic layer and its curves
    picks: list[int] = field(default_factory=list)  # the chosen option of each (len(ranks): keep the Conv)


@dataclass
class _Layer:
    """One automatically ranked layer and its curves."""

    site: ConvSite
    groups: list[np.ndarray]
    cap: int
    before: float  # cost of the Conv as it is
    ranks: list[int] = field(default_factory=list)
    fits: list[LayerFit] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # layer output error per rank
    weight: float = 1.0  # sensitivity of the final outputs to this layer's output error
    uniform: int = 0  # this layer's rank in the one-rank-for-all allocation

    def options(self) -> tuple[list[float], list[float]]:
        """Costs and damages of every option: each candidate rank, then the Conv kept as it is."""
        return self.costs + [self.before], [self.weight * e * e for e in self.errors] + [0.0]


def plan_ranks(model: onnx.ModelProto, sites: list[ConvSite], chosen: set[int], shapes, config,
               fitter: WarmFitter, progress: Progress | None = None) -> RankPlan:
    selection = config.selection
    plan = RankPlan({})
    auto: list[_Layer] = []
    ruled: list[ConvSite] = []
    for site in sites:
        if site.key not in chosen:
            continue
        if config.rank_rule(site.names) is not None:  # a --rank rule fixes this one
            decision = choose_rank(site, config)
            plan.choices[site.key] = LayerChoice(decision.rank, None, decision.requested, decision.capped,
                                                 decision.reason)
            if decision.rank is not None:
                ruled.append(site)
            continue
        before, per_rank = rank_unit_cost(site, config.realize)
        cap = before // per_rank if config.cap_rank else 2 * max(1, before // per_rank)
        if cap < 1:
            plan.choices[site.key] = LayerChoice(None, reason="no CP rank is cheaper than this Conv")
            continue
        auto.append(_Layer(site, site.groups(), int(cap), float(before)))
    for site in ruled:
        choice = plan.choices[site.key]
        choice.fit = fit_layer(site.groups(), choice.rank, config.seed, fitter)
    if selection.mode == "max-error":
        _by_error(plan, auto, selection.max_error, config.seed, fitter, progress)
    else:
        _by_budget(plan, model, sites, auto, ruled, shapes, config, fitter, progress)
    return plan


def _by_error(plan: RankPlan, auto: list[_Layer], max_error: float, seed: int, fitter: WarmFitter,
              progress: Progress | None) -> None:
    from onnx_cp.ranks.cost import rank_cost_macs

    for k, layer in enumerate(auto):
        if progress:
            progress(f"{layer.site.name} (rank search)", k, len(auto))
        result = smallest_rank(lambda r, warm: fit_layer(layer.groups, r, seed, fitter, warm), max_error,
                               layer.cap, 16 if layer.cap >= LARGE else 1)
        if result.fit is None:
            worst = result.tried[max(result.tried)]
            plan.choices[layer.site.key] = LayerChoice(
                None, requested=f"error<={max_error}",
                reason=f"no rank up to the cap {layer.cap} reaches kernel error {max_error} "
                       f"(rank {worst.rank}: {worst.rel_error:.4f}); kept as it is")
            continue
        plan.choices[layer.site.key] = LayerChoice(result.rank, result.fit, f"error<={max_error}",
                                                   cost=rank_cost_macs(layer.site, result.rank))
    plan.summary = {"mode": "max-error", "max_error": max_error}


def candidate_ranks(cap: int, share: float, count: int,
                    align: Callable[[int], int] = align_rank) -> list[int]:
    """About ``count`` ranks from share/3 to 2.5 share of the cap, each passed through ``align``
    (by default the rewrite's rounding to onnxruntime's NCHWc blocks, ``conv.align_rank``)."""
    lo, hi = max(share / 3, 1.0 / cap), min(1.0, max(2.5 * share, 2.0 / cap))
    fractions = np.geomspace(lo, hi, count) if hi > lo else [hi]
    return sorted({max(1, align(min(cap, max(1, int(round(f * cap)))))) for f in fractions})


def _by_budget(plan: RankPlan, model, sites, auto: list[_Layer], ruled: list[ConvSite], shapes, config,
               fitter: WarmFitter, progress: Progress | None) -> None:
    selection = config.selection
    summary = plan.summary = {"mode": selection.mode, "cost": selection.cost}
    if not auto:
        raise OnnxCpError(f"{selection.describe()}: no selected layer is left for automatic ranks")
    unknown = [s.name for s in [l.site for l in auto] + ruled if s.in_shape is None or s.out_shape is None]
    if unknown:
        raise OnnxCpError(f"{selection.describe()} needs every layer's shapes, and {unknown[0]}'s are unknown; "
                          "fix the input's dynamic dimensions with --input-shape NAME=1x3x224x224")
    if selection.cost == "macs":
        total = float(costs.model_macs(model, sites, shapes))
        unit_cost = lambda site, rank: float(  # noqa: E731
            costs.rank_cost_macs(site, rank) if rank is not None else site.cost.macs)
    share = _first_share(selection, auto, ruled, model, sites, shapes, plan)
    uniform = uniform_rank(auto, share * sum(float(l.site.cost.macs) for l in auto))
    align = config.align_rank
    for layer in auto:  # the uniform-rank allocation is always one of the candidates
        grid = candidate_ranks(layer.cap, share, selection.candidates, align)
        layer.uniform = max(1, align(min(uniform, layer.cap)))
        layer.ranks = sorted(set(grid) | {layer.uniform})
    if selection.cost == "latency":
        if progress:
            progress("timing layers in onnxruntime", 0, len(auto))
        profiler = costs.onnxruntime_profiler(config.threads, config.opt_level, config.input_shapes)
        fixed_sites = [layer.site for layer in auto] + ruled
        fixed_ranks = {s.key: plan.choices[s.key].rank for s in ruled}
        low = {l.site.key: l.ranks[0] for l in auto} | fixed_ranks
        high = {l.site.key: l.ranks[-1] for l in auto} | fixed_ranks
        timing = costs.measure_latency_model(model, fixed_sites, low, high, build_ranked, profiler)
        total, unit_cost = timing.total_ms, timing.cost
    for layer in auto:
        layer.before = unit_cost(layer.site, None)
        layer.costs = [unit_cost(layer.site, r) for r in layer.ranks]
    ruled_cost = sum(unit_cost(s, plan.choices[s.key].rank) for s in ruled)
    ruled_before = sum(unit_cost(s, None) for s in ruled)
    fixed = total - sum(l.before for l in auto) - ruled_before + ruled_cost
    target = total / selection.target_speedup if selection.target_speedup else float(selection.budget_macs)
    summary.update(total_before=total, fixed=fixed, target_total=target)
    cheapest = fixed + sum(min(l.costs) for l in auto)
    if target < cheapest:
        raise OnnxCpError(
            f"{selection.describe()} is out of reach: the layers not rewritten cost {fixed / total:.0%} of the "
            f"model, so the smallest candidate ranks reach at most {total / cheapest:.2f}x "
            f"({cheapest:.4g} of {total:.4g} {selection.cost}); ask for less or select more layers")

    feeds, note = load_calibration(model, selection.calib, selection.calib_count, selection.seed,
                                   config.input_shapes)
    if note:
        plan.notes.append(note)
    summary["calibration"] = {"source": selection.calib or "random", "inputs": len(feeds)}
    _fit_curves(auto, config.seed, fitter, progress)
    reference = proxy.run(model, feeds, config.threads)
    _layer_errors(model, auto, feeds, config.threads, progress)
    _sensitivities(model, auto, ruled, plan, feeds, reference, config.threads, build_ranked, progress)

    def evaluate(picks: list[int]) -> float:
        variant = build_ranked(model, _layers(auto, picks) + _ruled_layers(ruled, plan))
        return proxy.output_error(proxy.run(variant, feeds, config.threads), reference)

    options = [l.options() for l in auto]

    def choose(budget: float) -> list[int]:
        """The best of the knapsack, uniform-error and uniform-rank allocations on the calibration
        inputs, refined by the search when one is asked for."""
        starts = {name: (evaluate(p), p) for name, p in _starts(auto, options, budget).items()}
        summary["starts"] = {name: value for name, (value, _) in starts.items()}
        summary["greedy_output_error"] = starts["knapsack"][0]
        best = min(starts.values(), key=lambda vp: vp[0])
        if not selection.search:
            summary["output_error"] = best[0]
            return best[1]
        from onnx_cp.ranks.refine import refine

        known = {tuple(p): v for v, p in starts.values()}
        picks, value = refine(options, budget, known, evaluate, selection.search, selection.seed, progress,
                              storage=selection.storage, study_name=selection.study_name,
                              space=[(l.site.name, l.ranks) for l in auto])
        summary["search_trials"], summary["output_error"] = selection.search, value
        return picks

    picks = choose(target - fixed)
    rounds = []
    if selection.target_speedup and selection.measure:
        picks, rounds = _meet_measured(model, auto, ruled, plan, picks, options, fixed, total,
                                       selection.target_speedup, config, build_ranked, choose, progress)
    summary["rounds"] = rounds
    spent = fixed + sum(o[0][k] for o, k in zip(options, picks))
    summary.update(budget=target - fixed, total_after=spent, predicted_speedup=total / spent)
    plan.layers, plan.picks = auto, picks
    if rounds:
        summary["measured"] = rounds[summary["kept_round"] - 1]
    for layer, k in zip(auto, picks):
        if k == len(layer.ranks):
            plan.choices[layer.site.key] = LayerChoice(
                None, requested="auto", reason="the allocation keeps this Conv", cost=layer.before)
        else:
            plan.choices[layer.site.key] = LayerChoice(layer.ranks[k], layer.fits[k], "auto",
                                                       proxy=layer.errors[k], cost=layer.costs[k])
    for site in ruled:
        plan.choices[site.key].cost = unit_cost(site, plan.choices[site.key].rank)


def uniform_rank(auto: list[_Layer], budget_macs: float) -> int:
    """The largest single rank (capped per layer) whose CP forms fit ``budget_macs``."""
    lo, hi = 1, max(l.cap for l in auto)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(costs.rank_cost_macs(l.site, min(mid, l.cap)) for l in auto) <= budget_macs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _starts(auto: list[_Layer], options, budget: float) -> dict[str, list[int]]:
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
    starts["uniform rank"] = repair([l.ranks.index(l.uniform) for l in auto], options, budget)
    return starts


def _first_share(selection, auto, ruled, model, sites, shapes, plan) -> float:
    """The average share of their multiply-adds that the automatic layers may keep (for candidates)."""
    total = float(costs.model_macs(model, sites, shapes))
    before = sum(l.before for l in auto)
    others = total - before - sum(s.cost.macs or 0 for s in ruled) + sum(
        costs.rank_cost_macs(s, plan.choices[s.key].rank) for s in ruled)
    target = total / selection.target_speedup if selection.target_speedup else float(selection.budget_macs)
    return float(np.clip((target - others) / before, 0.02, 1.0)) if before else 1.0


def _fit_curves(auto: list[_Layer], seed: int, fitter: WarmFitter, progress: Progress | None) -> None:
    """Fit every candidate rank, ascending, each warm-started from the one below."""
    done, count = 0, sum(len(l.ranks) for l in auto)
    for layer in auto:
        warm = None
        for r in layer.ranks:
            if progress:
                progress(f"{layer.site.name} rank {r}", done, count)
            warm = fit_layer(layer.groups, r, seed, fitter, warm)
            layer.fits.append(warm)
            done += 1


def _layer_errors(model, auto: list[_Layer], feeds, threads: int, progress: Progress | None) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    dtype = auto[0].site.weight.value.dtype
    dtype = dtype if dtype in (np.float16, np.float32, np.float64) else np.float32
    got = proxy.capture(model, [t for l in auto for t in (l.site.node.input[0], l.site.node.output[0])],
                        feeds, dtype, threads)
    for k, layer in enumerate(auto):
        if progress:
            progress(f"{layer.site.name} feature-map error", k, len(auto))
        node = layer.site.node
        weight = np.asarray(layer.site.weight.value, dtype=np.float64)
        layer.errors = proxy.layer_errors(node, weight, layer.fits, got[node.input[0]], got[node.output[0]],
                                          opset, threads)


def _sensitivities(model, auto, ruled, plan, feeds, reference, threads, build, progress) -> None:
    """How much of a layer's output error reaches the model's outputs: (output err / layer err)^2,
    each layer alone at its middle candidate."""
    for k, layer in enumerate(auto):
        if progress:
            progress(f"{layer.site.name} sensitivity", k, len(auto))
        mid = len(layer.ranks) // 2
        if layer.errors[mid] <= 0:
            continue
        variant = build(model, [(layer.site, layer.ranks[mid], [f.factors for f in layer.fits[mid].fits])])
        out = proxy.output_error(proxy.run(variant, feeds, threads), reference)
        layer.weight = (out / layer.errors[mid]) ** 2


def _layers(auto: list[_Layer], picks: list[int]):
    return [(l.site, l.ranks[k], [f.factors for f in l.fits[k].fits])
            for l, k in zip(auto, picks) if k < len(l.ranks)]


def _ruled_layers(ruled, plan: RankPlan):
    return [(s, plan.choices[s.key].rank, [f.factors for f in plan.choices[s.key].fit.fits]) for s in ruled]


def _meet_measured(model, auto, ruled, plan, picks, options, fixed, total, speedup, config, build, choose,
                   progress):
    """Time the rewritten model against the original; when the measured speed-up misses the target
    by more than 10%, scale the budget by how far the cost model was off and allocate again.
    Keeps the round whose measured speed-up came closest to the target."""
    from onnx_cp.bench import measure_latency

    rounds, tried = [], []
    for attempt in range(config.selection.rounds + 1):
        if progress:
            progress(f"measuring the whole model (round {attempt + 1})", attempt, config.selection.rounds + 1)
        variant = build(model, _layers(auto, picks) + _ruled_layers(ruled, plan))
        base, new = measure_latency([model, variant], threads=config.threads, warmup=2, runs=12,
                                    input_shapes=dict(config.input_shapes), opt_level=config.opt_level)
        spent = fixed + sum(o[0][k] for o, k in zip(options, picks))
        measured = base.median / new.median
        rounds.append({"predicted_speedup": total / spent, "measured_speedup": measured,
                       "original_ms": base.median, "rewritten_ms": new.median,
                       "spread": max(base.spread, new.spread), "output_error": plan.summary["output_error"]})
        tried.append((abs(math.log(measured / speedup)), attempt, picks, variant))
        if abs(measured / speedup - 1) <= 0.1 or attempt == config.selection.rounds:
            break
        # the cost model was off by (predicted / measured): ask it for that much more (or less)
        budget_total = total / speedup * measured / (total / spent)
        try:
            picks = choose(budget_total - fixed)
        except OnnxCpError:
            break
    _, best, picks, plan.measured_variant = min(tried, key=lambda t: t[:2])
    plan.summary["output_error"] = rounds[best]["output_error"]
    plan.summary["kept_round"] = best + 1
    return picks, rounds

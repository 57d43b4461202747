"""--max-drop: the fastest model whose metric on the user's data drops by at most the allowed drop.

A new objective for the budget's machinery, not a second selector; the steps share one
BudgetProblem:

1. candidates over a wide range of each layer's cost, costed by the latency probe (grid,
   latency, target), fitted briefly and damaged by the proxy (curves, damages);
2. each layer's cost in the user's metric: the layer alone at a candidate of moderate error
   (``SCORED_ERROR``), scored on ``SENSITIVITY_SAMPLES`` of the choosing part (on all of it for a
   layer that can save at least ``STAKE`` of the model's time; with --calib after a short
   recovery, as the rewrite will recover it); its proxy curve is scaled to that drop, and the
   layer alone and its milliseconds saved make the sensitivity table;
3. the fastest of the knapsack's allocations (over budgets from every layer at its cheapest to
   every layer kept; the layers that read one weight allocated as one) that keeps the whole model
   within the drop, by bisection on each one's measured drop, scored as the rewrite will write it:
   its layers fitted in full and recovered (a layer whose factors and rewritten layers above are
   those of an earlier trial keeps that trial's recovery); then a bisection on the single
   candidate steps between it and the next faster allocation;
4. of the allocations found within the drop, the fastest timed together in onnxruntime;
5. the kept candidates fitted in full (those the search fitted are not fitted again).

With a time budget (``deadline``), a step that runs past it ends the search: before any allocation
was scored, the rewrite fails in one line saying where the time went; after, the fastest
allocation found within the drop is kept.

The rewrite's hold stage then scores the written model and gives layers back, worst accuracy per
millisecond first, while the drop is exceeded; the drop it reports is measured on the held-back part.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from onnx_cp.calibrate.session import QUICK_STEPS
from onnx_cp.errors import OnnxCpError, param
from onnx_cp.parallel_fit import past
from onnx_cp.progress import Progress
from onnx_cp.ranks.allocate import allocate
from onnx_cp.ranks.budget import check_shapes, record
from onnx_cp.ranks.curves import fit_curves, fit_kept
from onnx_cp.ranks.damages import measure_damages
from onnx_cp.ranks.grid import choose_candidates, macs_share
from onnx_cp.ranks.latency import latency_share
from onnx_cp.ranks.problem import BudgetProblem, weight_groups
from onnx_cp.ranks.target import assign_costs

# The speed-up the candidates are centred for: they span from well below it up to the Conv's cost.
GOAL = 4.0
# Budgets the knapsack allocates for, from every layer at its cheapest option to every layer kept.
BUDGETS = 48
# Candidates in all (at least ``RankSelection.candidates`` per layer): the candidates span each
# layer's whole cost, and a measured drop can only tell apart the allocations they make (charcnn36
# with 8 per layer had its large layer at rank 48, 4 points lost, or 96, 0.6 points).
CURVE_FITS = 48
# Samples of the choosing part the sensitivity table scores each layer on: it scales the layers'
# curves against each other, and the allocations are then scored on the whole part. On a CNN + LSTM
# captcha reader its 29 rows took 280 of a 1,180 s search at 1,400 samples.
SENSITIVITY_SAMPLES = 512
# A layer (or the layers reading one weight) that can save at least this share of the model's time
# is scored alone on the whole choosing part instead: its row scales the curve of the layer the
# search depends on most. On that reader the 20 input Gemms of one LSTM direction, 30% of its time,
# drew 0.98 points in one run and 0.39 in the other direction, a few samples of 512 each, and the
# ranks the knapsack gave them moved from 48 to 96 between runs.
STAKE = 0.1
# The output error of the candidate a sensitivity row scores a layer at: its curve is scaled to
# the drop measured there. The middle candidate of a wide grid lay at errors of 0.5 to 0.8 on a
# CNN + LSTM captcha reader (auto's middle of CP then Tucker-2 candidates fell on Tucker-2's 1x1),
# where the exact-string metric had dropped 8 to 57 points and saturates, far from the ranks the
# allocations keep.
SCORED_ERROR = 0.25
# Allocations within the drop timed together before one is kept (each is built and timed once).
TIMED_WITHIN = 6


@dataclass(frozen=True)
class Sensitivity:
    """One layer alone at its scored candidate: what it saves and what it costs in the metric."""

    layer: str
    decomposition: str
    rank: object
    ms_saved: float
    # the metric's drop with this layer alone rewritten (choosing part; max_drop's units); None where
    # no candidate is faster than the layer, so none could be chosen, and it was not scored
    drop: float | None
    decision: str = ""  # filled in by the report: rewritten, kept, given back
    # where several nodes read one weight (an RNN unrolled over its steps): all of them, scored
    # together as one row (``layer`` is the first), and given back together
    nodes: tuple[str, ...] = ()

    @property
    def members(self) -> tuple[str, ...]:
        return self.nodes or (self.layer,)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Trial:
    """One allocation the search scored."""

    budget: float  # the automatic layers' cost (ms or multiply-adds)
    predicted_speedup: float
    score: float
    drop: float
    within: bool
    measured_speedup: float | None = None  # timed in onnxruntime, where it held the drop (``_fastest_timed``)


def by_drop(problem: BudgetProblem, target, calibration, deadline: float | None, progress: Progress | None) -> None:
    """Fill the problem's plan for ``target`` (accuracy.AccuracyTarget); ``calibration``
    (calibrate.Calibration or None) recovers briefly what is scored."""
    check_shapes(problem)
    problem.goal = GOAL
    _in_time(problem, deadline, "the steps before the latency probe")
    share = macs_share(problem)
    if problem.selection.measure or problem.selection.cost == "latency":
        share = latency_share(problem, share, progress)
    _in_time(problem, deadline, "the latency probe")
    choose_candidates(problem, share, 1.0, CURVE_FITS)
    assign_costs(problem, progress, refuse=False)
    problem.feeds = problem.data.proxy_feeds()
    if not fit_curves(problem, progress, deadline):
        _in_time(problem, deadline, "the candidates' fits")
    if not measure_damages(problem, progress, deadline):
        _in_time(problem, deadline, "the candidates' damages")
    scorer = _Scorer(problem, target, calibration, progress, deadline)
    if not past(deadline):  # past the time budget the proxy's own damages order the layers
        quick = _Scorer(problem, target.sampled(SENSITIVITY_SAMPLES, problem.config.seed), calibration, progress,
                        deadline)
        problem.plan.sensitivity = _sensitivity(problem, quick, scorer, deadline, progress)
    picks = _fastest_timed(problem, scorer, _search(problem, scorer, deadline, progress), progress)
    fit_kept(problem, picks, progress)
    record(problem, picks)
    summary = problem.plan.summary
    summary.trials = [asdict(t) for t in scorer.trials]
    summary.baseline = target.baseline


class _Scorer:
    """Scores allocations of the problem on the choosing part, each once. ``full``: the layers'
    full fits and the rewrite's own recovery, as the written model will have them; else quick fits
    and a short recovery (each layer alone, for the sensitivity table). On a CNN + LSTM captcha
    reader, allocations predicted near 3x and scored from the quick fits lost 1.4 to 2.1 points,
    from the full fits 0.07 (one run each), and the quick fits saved no time: recovery takes most
    of each allocation's 50 to 85 s."""

    def __init__(self, problem: BudgetProblem, target, calibration, progress: Progress | None = None,
                 deadline: float | None = None):
        self.problem, self.target, self.calibration, self.progress = problem, target, calibration, progress
        self.deadline = deadline
        self.seen: dict[tuple, tuple[float, float]] = {}
        self.trials: list[Trial] = []
        self.tried: dict[tuple, int] = {}  # an allocation's picks -> its index in ``trials``

    def __call__(self, picks: list[int], full: bool = False) -> tuple[float, float]:
        """(score, drop) of the model with ``picks``."""
        key = (tuple(picks), full)
        if key not in self.seen:
            problem = self.problem
            if full:
                fit_kept(problem, picks, self.progress, measure=False)
            variant = problem.variant(picks)
            if self.calibration is not None:
                chosen = [(l, k) for l, k in zip(problem.auto, picks) if k < len(l.ranks)]
                steps = problem.config.recover_steps if full else QUICK_STEPS
                left = None if self.deadline is None else max(1.0, self.deadline - time.perf_counter())
                variant = self.calibration.quick_recover(problem.model, variant, _replacements(problem, chosen),
                                                         steps=steps, max_time=left)
            score = self.target.score(problem.finished(variant))
            self.seen[key] = (score, self.target.drop_of(score))
        return self.seen[key]


def _replacements(problem: BudgetProblem, chosen) -> list:
    from onnx_cp.splice import Replacement

    return [Replacement(l.site, problem.form(l.site, l.ranks[k], l.kind(k)), l.ranks[k], l.factors(k))
            for l, k in chosen] + [Replacement(s, problem.form(s, r, kind), r, f)
                                   for kind, s, r, f in problem.ruled_layers()]


def _sensitivity(problem: BudgetProblem, quick: _Scorer, whole: _Scorer, deadline: float | None,
                 progress: Progress | None) -> list[Sensitivity]:
    """Each layer alone at its scored candidate (``_scored``), scored (by ``quick``, on samples of the choosing
    part; by ``whole``, on all of it, where the layer can save at least ``STAKE`` of the model's
    time); its proxy curve scaled to that drop (a layer whose drop is within the metric's noise
    counts a quarter of one sample's worth). Layers that read one weight (an RNN unrolled into a
    Gemm per step) are scored together, one row and one scale: each alone changes one step of many,
    and scoring them one by one would multiply the search's time by the number of steps. Past
    ``deadline`` the layers not yet scored have no row and keep the proxy's sensitivity."""
    rows = []
    keep = [len(l.ranks) for l in problem.auto]
    groups = weight_groups(problem.auto)
    for g, members in enumerate(groups):
        if past(deadline):
            problem.plan.notes.append(f"{param('time_budget')} ran out during the sensitivity table: {g} of "
                                      f"{len(groups)} layers were scored alone, the rest ordered by the proxy")
            break
        first = problem.auto[members[0]]
        if progress:
            progress(f"sensitivity: {first.site.name}" + (f" and {len(members) - 1} more sharing its weight"
                                                          if len(members) > 1 else ""), g, len(groups))
        layers = [problem.auto[i] for i in members]
        scored = [_scored(l) for l in layers]
        drop = None  # no candidate faster than the Conv: the knapsack never takes one, so its drop
        # could change no decision, and the row says so instead of spending a scoring on it
        if any(c < l.before for l in layers for c in l.costs):
            drop = _scale(problem, members, scored, keep, quick, whole)
        saved = sum(l.before - l.costs[k] for l, k in zip(layers, scored))
        rows.append(Sensitivity(first.site.name, first.kind(scored[0]), first.label(scored[0]), saved, drop,
                                nodes=tuple(l.site.name for l in layers) if len(layers) > 1 else ()))
    return rows


def _scale(problem: BudgetProblem, members: list[int], scored: list[int], keep: list[int], quick: _Scorer,
           whole: _Scorer) -> float:
    """The drop of the layers ``members`` alone at their ``scored`` candidates, scored by ``whole``
    where they can save ``STAKE`` of the time, else by ``quick``; their proxy curves scaled to it."""
    layers = [problem.auto[i] for i in members]
    picks = list(keep)
    for i, k in zip(members, scored):
        picks[i] = k
    stake = sum(l.before - min(l.costs) for l in layers) / max(problem.total, 1e-12)
    scorer = whole if stake >= STAKE else quick
    _, drop = scorer(picks)
    floor = 0.25 / max(1, len(next(iter(scorer.target.split.selection.values()))))
    squared = sum(l.errors[k] ** 2 for l, k in zip(layers, scored))
    if squared > 0:
        for layer in layers:
            layer.weight = max(drop, floor) / squared
    return drop


def _scored(layer) -> int:
    """The candidate a layer's sensitivity row scores: among those faster than the layer, the one
    whose output error lies nearest ``SCORED_ERROR`` (in log), where the drop is measurable and
    the metric not yet saturated; the middle candidate where none is faster."""
    faster = [k for k in range(len(layer.ranks)) if layer.costs[k] < layer.before and layer.errors[k] > 0]
    if not faster:
        return layer.middle
    return min(faster, key=lambda k: (abs(math.log(layer.errors[k] / SCORED_ERROR)), layer.costs[k]))


def _search(problem: BudgetProblem, scorer: _Scorer, deadline: float | None, progress: Progress | None) -> list[int]:
    """The fastest allocation found within the drop: the knapsack's distinct allocations over
    budgets from every layer at its cheapest option to every layer kept, fastest first, and a
    bisection over them by each one's measured drop (full fits, the rewrite's recovery), then over
    the single candidate steps between the fastest within and the next faster one."""
    units = _tied(problem)
    options = _unit_options(problem.options(), units)
    costs, damages = [o[0] for o in options], [o[1] for o in options]
    allocations = [_spread(p, units) for p in _allocations(costs, damages)]
    allocations = [p for p in allocations if any(k < len(l.ranks) for l, k in zip(problem.auto, p))]
    best, failing = _bisect(problem, scorer, allocations, [len(l.ranks) for l in problem.auto], deadline, progress)
    if failing >= 0:
        # the knapsack's allocations lie far apart where one layer dominates the cost (charcnn36's
        # features.3 went from rank 96, 0.61 points lost, to the next allocation at 1.96): the single
        # candidate steps between the fastest within the drop and the next faster one
        ends = [[p[unit[0]] for unit in units] for p in (best, allocations[failing])]
        between = [_spread(p, units) for p in _path(*ends, options)[::-1]]
        best, _ = _bisect(problem, scorer, between, best, deadline, progress, " (between allocations)")
    return best


def _tied(problem: BudgetProblem) -> list[list[int]]:
    """The layers the knapsack allocates as one: those that read one weight and have the same
    candidates take the same one (the steps of an unrolled RNN: the sensitivity table scores them
    together and the hold stage gives them back together; tied, they share their factors too)."""
    units = []
    for members in weight_groups(problem.auto):
        same: dict[tuple, list[int]] = {}
        for i in members:
            layer = problem.auto[i]
            same.setdefault((tuple(map(str, layer.ranks)), tuple(layer.kinds)), []).append(i)
        units += same.values()
    return units


def _unit_options(options, units: list[list[int]]) -> list[tuple[list[float], list[float]]]:
    """Each unit's options: its members' costs and damages, summed candidate by candidate."""
    return [tuple(list(np.sum([options[i][part] for i in unit], axis=0)) for part in (0, 1)) for unit in units]


def _spread(picks, units: list[list[int]]) -> list[int]:
    """Per-unit picks as per-layer picks."""
    out = [0] * sum(len(u) for u in units)
    for unit, k in zip(units, picks):
        for i in unit:
            out[i] = k
    return out


def _fastest_timed(problem: BudgetProblem, scorer: _Scorer, best: list[int], progress: Progress | None) -> list[int]:
    """Of the allocations the search found within the drop (at most ``TIMED_WITHIN``, the fastest
    predicted first), the fastest timed together in onnxruntime, in the form the rewrite writes.
    The latency model's lines are drawn through two ranks of each form, and onnxruntime's kernels
    do not follow a line: on a CNN + LSTM captcha reader an allocation predicted at 3.03x ran 2.16x."""
    within = sorted((list(p) for p, i in scorer.tried.items() if scorer.trials[i].within), key=problem.spent)
    within = within[:TIMED_WITHIN]
    if len(within) < 2 or problem.measurement is None:
        return best
    if progress:
        progress(f"drop search: timing the {len(within)} allocations found within the drop", 0, 1)
    base, *times = problem.measurement.whole([problem.timed(problem.model)]
                                             + [problem.timed(problem.variant(p)) for p in within])
    speedups = [base.median / t.median for t in times]
    for picks, speedup in zip(within, speedups):
        i = scorer.tried[tuple(picks)]
        scorer.trials[i] = replace(scorer.trials[i], measured_speedup=speedup)
    fastest = max(range(len(within)), key=lambda i: speedups[i])
    if within[fastest] != best:
        problem.plan.notes.append(
            f"{param('max_drop')}: of {len(within)} allocations within the drop, the fastest timed ran {speedups[fastest]:.2f}x "
            f"(predicted {problem.total / problem.spent(within[fastest]):.2f}x); the fastest predicted "
            f"({problem.total / problem.spent(best):.2f}x) ran {speedups[within.index(best)]:.2f}x")
    return within[fastest]


def _bisect(problem: BudgetProblem, scorer: _Scorer, ordered: list[list[int]], best: list[int],
            deadline: float | None, progress: Progress | None, where: str = "") -> tuple[list[int], int]:
    """Bisection on the measured drop over allocations ``ordered`` fastest first, the one past the
    end (``best``) known to hold the drop and the one before the start known not to: the fastest
    found within, and the index of the slowest found outside (-1: none)."""
    failing, within_index = -1, len(ordered)
    while within_index - failing > 1:
        if past(deadline) and scorer.trials:
            break
        index = (failing + within_index) // 2
        picks = ordered[index]
        score, drop = scorer(picks, full=True)
        within = scorer.target.allows(score)
        spent = problem.spent(picks)
        scorer.tried[tuple(picks)] = len(scorer.trials)
        scorer.trials.append(Trial(spent - problem.fixed, problem.total / spent, score, drop, within))
        if within:
            within_index = index
            best = picks if spent < problem.spent(best) else best
        else:
            failing = index
        if progress:
            progress(f"drop search: best {problem.total / problem.spent(best):.2f}x within the drop, tried "
                     f"{problem.total / spent:.2f}x at drop {drop:.4g}{where}", len(scorer.trials),
                     len(scorer.trials) + int(math.log2(max(within_index - failing, 1))))
    return best, failing


def _path(start: list[int], end: list[int], options) -> list[list[int]]:
    """Allocations from ``start`` to ``end`` (neither included), one candidate step at a time: each
    layer passes through its options whose cost lies between its two ends, and each step is the
    one that adds the least proxy damage per unit of cost saved (steps that save nothing first)."""
    lanes = []
    for (costs, _), a, b in zip(options, start, end):
        lo, hi = sorted((costs[a], costs[b]))
        between = [k for k in range(len(costs)) if lo < costs[k] < hi]
        lanes.append(sorted(between, key=lambda k: -costs[k] if costs[a] > costs[b] else costs[k]) + [b]
                     if a != b else [])
    current, path, steps = list(start), [], [0] * len(start)
    while any(step < len(lane) for step, lane in zip(steps, lanes)):
        moves = []
        for i, lane in enumerate(lanes):
            if steps[i] < len(lane):
                (costs, damages), k, a = options[i], lane[steps[i]], current[i]
                saved, hurt = costs[a] - costs[k], damages[k] - damages[a]
                moves.append((saved > 0, hurt / saved if saved > 0 else hurt, i))
        _, _, i = min(moves)
        current = list(current)
        current[i] = lanes[i][steps[i]]
        steps[i] += 1
        path.append(current)
    return path[:-1]


def _allocations(costs, damages) -> list[list[int]]:
    """The knapsack's distinct allocations over budgets from the cheapest to all kept, fastest first."""
    lo = sum(min(c) for c in costs)
    hi = sum(c[-1] for c in costs)
    found: dict[tuple, float] = {}
    for budget in ([lo] if hi <= lo else [lo * (hi / lo) ** (i / (BUDGETS - 1)) for i in range(BUDGETS)]):
        picks = tuple(allocate(costs, damages, budget))
        found.setdefault(picks, sum(c[k] for c, k in zip(costs, picks)))
    return [list(p) for p, _ in sorted(found.items(), key=lambda item: item[1])]


def _in_time(problem: BudgetProblem, deadline: float | None, step: str) -> None:
    """Past ``deadline`` before any allocation was scored: no model within the drop can be named,
    so the rewrite fails saying where the time went."""
    if not past(deadline):
        return
    budget = problem.config.time_budget
    spent = budget + time.perf_counter() - deadline
    raise OnnxCpError(f"{param('time_budget', f'{budget:g}')} ran out in {step} (after {spent:.1f} s), before the search "
                      "scored any model, so no model within the drop was found; give it more time, or leave it out")

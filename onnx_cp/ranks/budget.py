"""Ranks under a budget (--target-speedup, --budget-macs): the steps around one ``BudgetProblem``.

1. candidates (grid.py): a few ranks per layer around the share of its cost the target leaves it,
   the share taken from a latency probe (latency.py) for a measured --target-speedup;
2. costs (target.py): each candidate's cost (multiply-adds, or latency measured with placeholder
   factors), the fixed rest of the model, the target; an unreachable target fails here;
3. curves (curves.py): every candidate fitted briefly in worker processes;
4. damages (damages.py): each candidate's error at the layer's output on the proxy's inputs,
   weighted by how much of it reaches the model's outputs; with quantize='int8', the error of
   each candidate and of the Conv kept in INT8 (int8_damages.py);
5. allocation (allocation.py): the best of the knapsack, uniform-error and uniform-rank starts
   (refined by optuna with --search), re-allocated when the measured speed-up misses the target;
6. final fits (curves.py): only the kept candidates are fitted in full, each going on from its
   quick fit.

With ``--decomposition auto`` a layer's candidates span several decompositions (CP and Tucker-2
for a k x k Conv, truncated SVD for a 1x1 Conv, a Gemm or a MatMul), costed by the same latency
model, damaged by the same proxy and allocated by the same knapsack.
"""
from __future__ import annotations

import time

from onnx_cp.errors import OnnxCpError, shape_param
from onnx_cp.progress import Progress
from onnx_cp.ranks.allocation import best_allocation, meet_measured
from onnx_cp.ranks.curves import fit_curves, fit_kept
from onnx_cp.ranks.damages import measure_damages
from onnx_cp.ranks.int8_damages import measure_int8_damages
from onnx_cp.ranks.grid import choose_candidates, macs_share
from onnx_cp.ranks.latency import latency_share
from onnx_cp.ranks.problem import BudgetProblem
from onnx_cp.ranks.target import assign_costs
from onnx_cp.decision import Decision


def by_budget(problem: BudgetProblem, progress: Progress | None) -> None:
    """Fill the problem's plan with a rank (or the Conv kept) for every automatic layer."""
    selection = problem.selection
    seconds = problem.plan.summary.seconds
    problem.plan.summary.cost = selection.cost
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    check_shapes(problem)
    share = macs = macs_share(problem)
    if selection.target_speedup and (selection.measure or selection.cost == "latency"):
        # CP forms run well below their multiply-add count's speed (on VGG-16, a third of the
        # multiply-adds gave nowhere near 3x): the share comes from latency, and the candidates
        # still reach up to the multiply-add share, since a latency line drawn through two probes
        # can be far off at low ranks
        share = latency_share(problem, share, progress)
    choose_candidates(problem, share, macs)
    assign_costs(problem, progress)
    lap("costs")
    problem.feeds = problem.data.proxy_feeds()
    problem.plan.summary.calibration = {"source": problem.data.source or "random", "inputs": len(problem.feeds)}
    if problem.data.note:
        problem.plan.notes.append(problem.data.note)
    fit_curves(problem, progress)
    lap("curves")
    measure_damages(problem, progress)
    if problem.quantized:
        measure_int8_damages(problem, progress)
    lap("damages")
    picks = best_allocation(problem, problem.target - problem.fixed, progress)
    if selection.target_speedup and selection.measure:
        picks = meet_measured(problem, picks, progress)
    lap("allocation")
    fit_kept(problem, picks, progress)
    lap("final fits")
    record(problem, picks)


def check_shapes(problem: BudgetProblem) -> None:
    selection = problem.selection
    if not problem.auto:
        raise OnnxCpError(f"{selection.describe()}: no selected layer is left for automatic ranks")
    unknown = [s.name for s in [l.site for l in problem.auto] + problem.ruled
               if s.in_shape is None or s.out_shape is None]
    if unknown:
        raise OnnxCpError(f"{selection.describe()} needs every layer's shapes, and {unknown[0]}'s are unknown; "
                          f"fix the input's dynamic dimensions with {shape_param('NAME', '1x3x224x224')}")


def record(problem: BudgetProblem, picks: list[int]) -> None:
    plan, summary = problem.plan, problem.plan.summary
    spent = problem.spent(picks)
    summary.budget, summary.total_after = problem.target - problem.fixed, spent
    summary.predicted_speedup = problem.total / spent
    plan.layers, plan.picks = problem.auto, picks
    kinds: dict[str, int] = {}
    for layer, k in zip(problem.auto, picks):
        if k == len(layer.ranks):
            plan.choices[layer.site.key] = Decision(None, "auto", reason=f"the allocation keeps this {layer.site.op_type}",
                                                    cost=layer.before)
        else:
            plan.choices[layer.site.key] = Decision(layer.ranks[k], "auto", proxy=layer.errors[k], cost=layer.costs[k],
                                                    decomposition=layer.kind(k), fit=layer.fits[k])
            kinds[layer.kind(k)] = kinds.get(layer.kind(k), 0) + 1
    if problem.mixed:
        summary.decompositions = kinds
    for site in problem.ruled:
        plan.choices[site.key].cost = problem.unit_cost(site, problem.ruled_kind(site), plan.choices[site.key].rank)

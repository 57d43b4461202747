"""The costs of a budget selection: every candidate's cost in the selection's unit (multiply-adds,
or latency where it was measured), the fixed rest of the model and the target; a target out of
reach is refused here, before any fit."""
from __future__ import annotations

from onnx_cp.errors import OnnxCpError
from onnx_cp.progress import Progress
from onnx_cp.ranks.cost import option_macs
from onnx_cp.ranks.grid import span
from onnx_cp.ranks.latency import latency_model, scale_to_measured
from onnx_cp.ranks.problem import BudgetProblem


def assign_costs(problem: BudgetProblem, progress: Progress | None, refuse: bool = True) -> None:
    """Every candidate's cost, the fixed rest and the target; refuses an unreachable target
    (unless ``refuse`` is off: a search that sets its own budgets)."""
    selection, plan = problem.selection, problem.plan
    auto, ruled = problem.auto, problem.ruled
    # --decomposition auto costs its options by the latency model wherever the selection measured
    # one: multiply-adds say little about how CP's depthwise stages compare with Tucker-2's or an
    # SVD's dense ones in onnxruntime
    # --max-drop allocates by measured latency, where it has one
    by_latency = selection.cost == "latency" or (problem.latency is not None
                                                 and (problem.mixed or selection.mode == "max-drop"))
    if not by_latency:
        total = problem.model_macs

        def unit_cost(site, kind=None, rank=None) -> float:
            return float(site.cost.macs if rank is None else option_macs(site, kind, rank))
    else:
        timing = problem.latency or latency_model(problem, span(auto), progress)
        total = timing.total_ms

        def unit_cost(site, kind=None, rank=None) -> float:
            return timing.cost(site, kind, rank)
    for layer in auto:
        layer.before = unit_cost(layer.site)
        layer.costs = [unit_cost(layer.site, layer.kind(k), r) for k, r in enumerate(layer.ranks)]
    ruled_delta = sum(unit_cost(s, problem.ruled_kind(s), plan.choices[s.key].rank) - unit_cost(s)
                      for s in ruled)
    problem.unit_cost, problem.total = unit_cost, total
    plan.summary.cost = "latency" if by_latency else "macs"
    problem.fixed = total - sum(l.before for l in auto) + ruled_delta
    problem.target = float(selection.budget_macs) if selection.budget_macs else total / problem.float_speedup
    summary = plan.summary
    summary.total_before, summary.fixed, summary.target_total = total, problem.fixed, problem.target
    if by_latency and problem.mixed and selection.target_speedup and selection.measure:
        scale_to_measured(problem, progress)
    cheapest = problem.cheapest()
    if refuse and problem.target < cheapest:
        # with quantize='int8' the costs are INT8 times, and the reach is over the float input
        int8 = f" in INT8 (which alone makes it {problem.end_gain:.2f}x faster)" if problem.quantized else ""
        raise OnnxCpError(
            f"{selection.describe()} is out of reach: the layers not rewritten cost {problem.fixed / total:.0%} of "
            f"the model{int8}, so the smallest candidate ranks reach at most {problem.end_gain * total / cheapest:.2f}x "
            f"({cheapest:.4g} of {total:.4g} {plan.summary.cost}); ask for less or select more layers")

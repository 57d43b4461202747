"""Choose a rank for every selected layer: by its rank rule, by an error bound, or by a budget and a
data-aware proxy.

``rule_decision`` is the one place a --rank rule becomes a layer's rank (through the
decomposition's own ``rule_rank``); ``plan_ranks`` is what the rewrite calls for rank selection.
The error bound lives in ``by_error.py``, the budget modes in ``budget.py``; what they decide, in
``selection.py``.
"""
from __future__ import annotations

import onnx

from onnx_cp import decompositions
from onnx_cp.decision import Decision
from onnx_cp.decompositions.cp_solver import Fitter
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import Progress, staged
from onnx_cp.ranks.budget import by_budget
from onnx_cp.ranks.by_error import by_error
from onnx_cp.ranks.drop import by_drop
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem
from onnx_cp.ranks.selection import RankPlan, SelectionSummary
from onnx_cp.sites import Site


def rule_decomposition(site: Site, config) -> str:
    """The decomposition a --rank rule gives ``site`` (auto's rules are CP ranks, which set the
    budget of its candidates)."""
    return site.decomposition(decompositions.rule_decomposition(config.decomposition))


def rule_decision(site: Site, config) -> Decision:
    """The rank ``config``'s rules give an eligible site."""
    rule = config.rank_rule(site.names)
    if rule is None:
        return Decision(None, reason="no rank rule matches this layer")
    d = decompositions.get(rule_decomposition(site, config))
    return d.rule_rank(rule.value, site.spec, site.in_shape, site.out_shape, site.cost, site.groups(),
                       factor_rank=config.factor_rank, cap_rank=config.cap_rank, align=config.align_rank,
                       realize=config.realize, name=site.name)


def plan_ranks(model: onnx.ModelProto, sites: list[Site], chosen: set[str], shapes, config, *,
               measurement=None, data=None, calibration=None, fitter: Fitter | None = None,
               progress: Progress | None = None, accuracy=None, deadline: float | None = None) -> RankPlan:
    """A rank, or the Conv kept, for every site whose key is in ``chosen``, as ``config.selection``
    asks; ``--rank`` rules with a pattern fix the layers they match. ``measurement`` times
    (measure.Measurement), ``data`` feeds the proxy (calibrate.CalibrationData), ``calibration``
    gives the observed layers' statistics, so every candidate is fitted data-aware (calibrate.
    Calibration, or None); ``fitter`` (tests) replaces the CP solver; ``accuracy``: what
    ``max_drop`` is measured by (accuracy.AccuracyTarget), its search ending by ``deadline``."""
    selection = config.selection
    plan = RankPlan({}, SelectionSummary(selection.mode))
    moments = calibration.moments if calibration is not None else (lambda site: None)
    auto: list[BudgetLayer] = []
    ruled: list[Site] = []
    for site in sites:
        if site.key not in chosen:
            continue
        if config.rank_rule(site.names) is not None:  # a --rank rule fixes this one
            plan.choices[site.key] = rule_decision(site, config)
            if plan.choices[site.key].rank is not None:
                ruled.append(site)
            continue
        layer = _budget_layer(site, config, moments(site))
        if layer is None:
            what = "CP rank" if config.decomposition != "auto" else "rank of cp, tucker2 or svd"
            plan.choices[site.key] = Decision(None, reason=f"no {what} is cheaper than this Conv")
        else:
            auto.append(layer)
    tasks = [FitTask(s.key, s.name, s.groups(), plan.choices[s.key].rank, config.seed, moments(s),
                     decomposition=rule_decomposition(s, config)) for s in ruled]
    for key, fit in fit_all(tasks, config.fit_options(), config.worker_count(), staged(progress, "fitting"),
                            fitter).items():
        plan.choices[key].fit = fit
    if selection.mode == "max-error":
        warm = None if fitter is None else (lambda kernel, rank, seed, init: fitter(kernel, rank, seed))
        by_error(plan, auto, selection.max_error, config.seed, config.fit_options(), config.worker_count(),
                 config.align_rank, progress, warm)
    else:
        problem = BudgetProblem(model, sites, shapes, auto, ruled, plan, config, mixed=config.decomposition == "auto",
                                measurement=measurement, data=data, fitter=fitter)
        if config.quantize is not None and selection.mode != "budget-macs" and measurement is not None:
            _end_form(problem, progress)
        if selection.mode == "max-drop":
            by_drop(problem, accuracy, calibration, deadline, progress)
        else:
            by_budget(problem, progress)
    return plan


def _end_form(problem: BudgetProblem, progress: Progress | None) -> None:
    """With quantize='int8' the target is the quantized model's: the latency probe and the measured
    rounds time each variant quantized (a kept Conv costs its INT8 time, a chain its stages'), and
    the float plan starts from the target over what int8 gains on the input."""
    from onnx_cp.quantize import int8_for_timing, quantize_int8

    calibration = problem.data.int8_inputs
    if progress:
        progress("latency probe: timing the input in INT8", 0, 1)
    problem.finished = lambda model: quantize_int8(model, calibration)
    problem.timed_form = int8_for_timing(calibration)
    problem.quantized = True
    problem.plan.int8_input = problem.finished(problem.model)
    base, int8 = problem.measurement.whole([problem.model, problem.plan.int8_input])
    problem.end_gain = max(1.0, base.median / int8.median)
    problem.plan.summary.end_gain = problem.end_gain


def _budget_layer(site: Site, config, moments) -> BudgetLayer | None:
    """The layer as rank selection's problem holds it, or None when no candidate is cheaper than it."""
    kinds = decompositions.budget_candidates(config.decomposition, site.decomposition(config.decomposition),
                                             site.spec)
    counted = next((decompositions.get(k) for k in kinds if decompositions.get(k).count_ranked), None)
    spec = site.spec
    before = site.cost.macs if site.cost.macs is not None else \
        spec.out_channels * spec.in_per_group * spec.kernel[0] * spec.kernel[1]
    cap = 0
    if counted is not None:
        before, per_rank = counted.unit_cost(spec, site.in_shape, site.out_shape, site.cost, config.realize)
        cap = counted.count_cap(spec, site.in_shape, site.out_shape, site.cost, config.realize) if config.cap_rank \
            else 2 * max(1, before // per_rank)
    if config.decomposition == "auto":  # each decomposition where its ranks are cheaper than the Conv
        kinds = tuple(k for k in kinds if (cap >= 1 if decompositions.get(k).count_ranked else _cheaper(site, k)))
        cap = cap if any(decompositions.get(k).count_ranked for k in kinds) else 0
    elif cap < 1:
        kinds = ()
    if not kinds:
        return None
    return BudgetLayer(site, site.groups(), int(cap), float(before), kinds, moments)


def _cheaper(site: Site, kind: str) -> bool:
    """Whether some rank of ``kind`` costs fewer multiply-adds than the layer."""
    return site.cost is not None and site.cost.macs is not None and \
        decompositions.get(kind).cap(site.spec, site.in_shape, site.out_shape) is not None

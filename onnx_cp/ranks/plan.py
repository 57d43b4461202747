"""Choose a rank for every selected layer: by an error bound, or by a budget and a data-aware proxy.

``plan_ranks`` is all that ``rewrite`` calls; it returns a RankPlan whose fits the rewriter reuses.
The error bound lives in ``by_error.py``, the budget modes in ``budget.py``; what they decide, in
``selection.py``.
"""
from __future__ import annotations

from typing import Callable

import onnx

from onnx_cp import decompositions
from onnx_cp.decompose import Fitter
from onnx_cp.discover import ConvSite
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import Progress
from onnx_cp.ranks.budget import BudgetLayer, budget_decompositions, by_budget
from onnx_cp.ranks.by_error import by_error
from onnx_cp.ranks.rules import choose_rank, rank_unit_cost
from onnx_cp.ranks.selection import LayerChoice, RankPlan, SelectionSummary


def plan_ranks(model: onnx.ModelProto, sites: list[ConvSite], chosen: set[str], shapes, config,
               fitter: Fitter | None = None, progress: Progress | None = None,
               weights: Callable[[ConvSite], object] | None = None) -> RankPlan:
    """A rank, or the Conv kept, for every site whose key is in ``chosen``, as ``config.selection``
    asks; ``--rank`` rules with a pattern fix the layers they match. ``fitter`` (tests) replaces
    the solver. ``weights`` (calibration data) gives a site's data-aware weighting, or None:
    the budget modes then fit every candidate to the layer's output error on real inputs."""
    weights = weights or (lambda site: None)
    selection = config.selection
    plan = RankPlan({}, SelectionSummary(selection.mode))
    auto: list[BudgetLayer] = []
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
        kinds = budget_decompositions(site, config.decomposition)
        before, per_rank = rank_unit_cost(site, config.realize)
        cap = before // per_rank if config.cap_rank else 2 * max(1, before // per_rank)
        if kinds != ("cp",):  # --decomposition auto: cp where a CP rank is cheaper, the others where theirs are
            kinds = tuple(k for k in kinds if (cap >= 1 if k == "cp" else _cheaper(site, k)))
            cap = cap if "cp" in kinds else 0
        elif cap < 1:
            kinds = ()
        if not kinds:
            what = "CP rank" if config.decomposition != "auto" else "rank of cp, tucker2 or svd"
            plan.choices[site.key] = LayerChoice(None, reason=f"no {what} is cheaper than this Conv")
            continue
        auto.append(BudgetLayer(site, site.groups(), int(cap), float(before), weights=weights(site),
                                decompositions=kinds))
    tasks = [FitTask(s.key, s.name, s.groups(), plan.choices[s.key].rank, config.seed, weights(s)) for s in ruled]
    for key, fit in fit_all(tasks, config.fit_options(), config.worker_count(), progress, fitter).items():
        plan.choices[key].fit = fit
    if selection.mode == "max-error":
        warm = None if fitter is None else (lambda kernel, rank, seed, init: fitter(kernel, rank, seed))
        by_error(plan, auto, selection.max_error, config.seed, config.fit_options(), config.worker_count(),
                 config.align_rank, progress, warm)
    else:
        by_budget(plan, model, sites, shapes, auto, ruled, config, fitter, progress)
    return plan


def _cheaper(site: ConvSite, kind: str) -> bool:
    """Whether some rank of ``kind`` costs fewer multiply-adds than the layer."""
    return site.cost is not None and site.cost.macs is not None and \
        decompositions.get(kind).cap(site.spec, site.in_shape, site.out_shape) is not None

"""The fits of a budget selection: every candidate fitted briefly (``CURVE_ITERATIONS``) in worker
processes, enough to rank the options against each other, and then only the kept ones in full,
each going on from its quick fit (where its decomposition improves by iterating)."""
from __future__ import annotations

from dataclasses import replace

from onnx_cp import decompositions
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import Progress, staged
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem

# NLS iterations of a curve fit. On a trained VGG-16 512x512x3x3 kernel, 10 iterations from the
# SVD start reach 0.62 relative error at rank 240 where the full fit ends at 0.59: the curves
# only have to order options, and the kept ones are fitted in full afterwards.
CURVE_ITERATIONS = 10
# A kept candidate's full fit iterates on from its quick fit for at most this many times the quick
# fit's time (its degeneracy correction comes on top, as always). On VGG-16 at --target-speedup 3,
# unbounded final fits took 445 of 690 s and lowered the calibration output error only from
# 0.0100 to 0.0088, and at 2x they still took 70 of 178 s. Its 512x512x3x3 layer at rank 592:
# quick fit 0.354 relative error in 6 s; 1.5x: 0.317 in 21 s, 3x: 0.312 in 39 s (correction
# included; tools/final_fit_budget.py).
FINAL_FIT_FACTOR = 1.0


def fit_curves(problem: BudgetProblem, progress: Progress | None, deadline: float | None = None) -> bool:
    """Every candidate of every layer, fitted briefly, in parallel. False (and no layer's fits set)
    where ``deadline`` (a ``time.perf_counter()``) passed before every candidate was fitted."""
    config = problem.config
    options = replace(config.fit_options(), max_iter=min(config.max_iter, CURVE_ITERATIONS), stabilize="never")
    tasks = [task(l, (i, k), k, config.seed) for i, l in enumerate(problem.auto) for k in range(len(l.ranks))]
    fits = fit_all(tasks, options, config.worker_count(), staged(progress, "curves"), problem.fitter, deadline)
    if len(fits) < len(tasks):
        return False
    for i, layer in enumerate(problem.auto):
        layer.fits = [fits[(i, k)] for k in range(len(layer.ranks))]
    return True


def task(layer: BudgetLayer, key, k: int, seed: int, **more) -> FitTask:
    """The fit of candidate ``k``, data-aware when the layer was observed."""
    return FitTask(key, f"{layer.site.name} {layer.label(k)}", layer.groups, layer.ranks[k], seed, layer.moments,
                   decomposition=layer.kind(k), **more)


def fit_kept(problem: BudgetProblem, picks: list[int], progress: Progress | None, measure: bool = True) -> None:
    """Fit the kept candidates in full, each going on from its quick curve fit (once: a candidate
    fitted in full already is not fitted again), and measure the allocation's output error again
    with them. Only decompositions whose fits improve by iterating: an SVD is exact at its rank
    already, and HOOI's sweeps past the curve's lower a Tucker-2 fit's error by little (a random
    512x512x3x3 kernel at ranks 160: 0.8585 after 5 sweeps, 0.8572 after 100, which took 50 s on
    one core)."""
    config = problem.config
    todo = [(i, l, k) for i, (l, k) in enumerate(zip(problem.auto, picks))
            if k < len(l.ranks) and decompositions.get(l.kind(k)).iterative and (i, k) not in problem.full]
    tasks = [task(l, (i, k), k, config.seed, init=l.fits[k],
                  iteration_time=max(1.0, FINAL_FIT_FACTOR * l.fits[k].seconds)) for i, l, k in todo]
    fits = fit_all(tasks, config.fit_options(), config.worker_count(), staged(progress, "final fits"), problem.fitter)
    for (i, k), fit in fits.items():
        problem.auto[i].fits[k] = fit
        problem.full.add((i, k))
    if measure and any(k < len(l.ranks) for l, k in zip(problem.auto, picks)):
        problem.plan.summary.final_output_error = problem.output_error(picks)

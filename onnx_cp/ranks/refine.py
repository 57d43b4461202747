"""--search N: refine an allocation by Bayesian optimization (optuna's TPE, seeded) on the proxy.

Each trial picks one option per layer; an allocation over the budget is repaired by moving
layers to cheaper options, least predicted damage per unit of cost saved first. The value
is the measured relative error of the model's outputs on the calibration inputs. The starting
allocations (knapsack, uniform error, uniform rank) are the first trials, so the search can only
improve on the best of them.
"""
from __future__ import annotations

from typing import Callable, Sequence


def repair(picks: list[int], options: Sequence[tuple[list[float], list[float]]], budget: float) -> list[int]:
    picks = list(picks)
    spend = lambda: sum(o[0][k] for o, k in zip(options, picks))  # noqa: E731
    while spend() > budget:
        best = None
        for layer, ((cost, damage), k) in enumerate(zip(options, picks)):
            for j in range(len(cost)):
                saved = cost[k] - cost[j]
                if saved > 0:
                    ratio = (damage[j] - damage[k]) / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, layer, j)
        if best is None:
            break
        picks[best[1]] = best[2]
    return picks


def refine(options, budget: float, starts: dict[tuple[int, ...], float], evaluate: Callable[[list[int]], float],
           trials: int, seed: int, progress=None) -> tuple[list[int], float]:
    """The best allocation (and its value) among ``starts`` (allocation -> known value) and
    ``trials`` sampled ones. The starts are the first trials and are not evaluated again."""
    try:
        import optuna
    except ImportError:
        from onnx_cp.errors import OnnxCpError

        raise OnnxCpError("--search needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    names = [f"layer{i}" for i in range(len(options))]
    for start in starts:
        study.enqueue_trial(dict(zip(names, start)))
    seen: dict[tuple[int, ...], float] = dict(starts)
    best: tuple[float, list[int]] | None = None

    def objective(trial) -> float:
        nonlocal best
        if progress:
            progress(f"search trial {trial.number + 1}", trial.number, trials + len(starts))
        picks = repair([trial.suggest_int(n, 0, len(o[0]) - 1) for n, o in zip(names, options)], options, budget)
        key = tuple(picks)
        if key not in seen:
            seen[key] = evaluate(picks)
        if best is None or seen[key] < best[0]:
            best = (seen[key], picks)
        return seen[key]

    study.optimize(objective, n_trials=trials + len(starts))
    return best[1], best[0]

"""--search N: refine an allocation by Bayesian optimization (optuna's TPE, seeded) on the proxy.

Each trial picks one option per layer; an allocation over the budget is repaired by moving
layers to cheaper options, least predicted damage per unit of cost saved first. The value
is the measured relative error of the model's outputs on the calibration inputs. The greedy
allocation is the first trial, so the search can only improve on it.
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


def refine(options, budget: float, start: list[int], start_value: float, evaluate: Callable[[list[int]], float],
           trials: int, seed: int, progress=None) -> tuple[list[int], int]:
    """The best allocation found in ``trials`` evaluations (``start`` included), and the trial count."""
    try:
        import optuna
    except ImportError:
        from onnx_cp.errors import OnnxCpError

        raise OnnxCpError("--search needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    names = [f"layer{i}" for i in range(len(options))]
    study.enqueue_trial(dict(zip(names, start)))
    best = (start_value, list(start))
    seen = {tuple(start): start_value}

    def objective(trial) -> float:
        nonlocal best
        if progress:
            progress(f"search trial {trial.number + 1}", trial.number, trials)
        picks = [trial.suggest_int(n, 0, len(o[0]) - 1) for n, o in zip(names, options)]
        picks = repair(picks, options, budget)
        key = tuple(picks)
        if key not in seen:
            seen[key] = evaluate(picks)
        if seen[key] < best[0]:
            best = (seen[key], picks)
        return seen[key]

    study.optimize(objective, n_trials=trials)
    return best[1], trials

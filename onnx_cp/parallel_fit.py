"""Fit many layers at once in worker processes.

Each layer is one task (all its groups); the solver runs on one BLAS thread and every task
has its own seed, so the factors are the same whatever the number of workers. Big tasks go
first so the last worker does not start a large layer alone.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Hashable, Sequence

import numpy as np

from onnx_cp import decompositions
from onnx_cp.decompositions import Factors
from onnx_cp.decompositions.cp_solver import FitOptions, Fitter
from onnx_cp.decompositions.moments import ModeMoments
from onnx_cp.progress import Progress


@dataclass(frozen=True)
class FitTask:
    key: Hashable
    label: str  # what the progress bar shows
    groups: Sequence[np.ndarray]
    rank: object  # the decomposition's own rank (an int for cp)
    seed: int
    # Per group, the layer's input statistics (--calib): the fit then minimizes the layer's output
    # error on such inputs; None: the kernel error.
    moments: Sequence[ModeMoments] | None = None
    # A fit of this layer to go on from (the same rank with fewer iterations, or a neighbouring rank).
    init: Factors | None = None
    iteration_time: float | None = None  # seconds of iterations for the whole layer (FitOptions.iteration_time)
    decomposition: str = decompositions.DEFAULT

    @property
    def size(self) -> float:
        """A rough cost estimate (the kernel's entries times the rank), for ordering."""
        leaves = np.ravel(np.array(self.rank, dtype=object)) if not isinstance(self.rank, int) else [self.rank]
        return float(sum(g.size for g in self.groups)) * max(int(np.prod(v)) for v in leaves)


def fit_all(tasks: Sequence[FitTask], options: FitOptions, jobs: int, progress: Progress | None = None,
            fitter: Fitter | None = None, deadline: float | None = None) -> dict[Hashable, Factors]:
    """Every task's Factors, by key. ``fitter`` (tests) replaces the CP solver and runs in process.
    Past ``deadline`` (a ``time.perf_counter()``) no fit starts: the result then lacks some keys."""
    results: dict[Hashable, Factors] = {}
    if not tasks:
        return results
    order = sorted(tasks, key=lambda t: -t.size)
    if fitter is not None or jobs <= 1 or len(order) == 1:
        warm = None if fitter is None else (lambda k, r, s, init: fitter(k, r, s))
        for done, task in enumerate(order):
            if past(deadline):
                break
            if progress:
                progress(task.label, done, len(order))
            results[task.key] = _fit_task(task, options, warm)
        return results
    with worker_pool(min(jobs, len(order))) as pool:
        pending = {pool.submit(_fit_task, task, options): task for task in order}
        if progress:
            progress(_labels(pending.values()), 0, len(order))
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            done, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                results[task.key] = future.result()
            if past(deadline):  # the fits running end on their own; the queued ones never start
                for future in pending:
                    future.cancel()
                break
            if progress:
                progress(_labels(pending.values()), len(results), len(order))
    return results


def past(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.perf_counter()``, or None for none) has passed."""
    return deadline is not None and time.perf_counter() > deadline


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for fits. fork: workers need nothing but numpy, and unlike spawn or forkserver
    it does not re-run a caller's script, which an API user's script without a __main__ guard
    would not survive."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _labels(tasks) -> str:
    names = [t.label for t in tasks]
    return ", ".join(names[:2]) + (f" (+{len(names) - 2})" if len(names) > 2 else "")


def _fit_task(task: FitTask, options: FitOptions, fitter=None) -> Factors:
    """Runs in a worker: the layer's groups share its time budget."""
    if options.max_time is not None:
        options = replace(options, max_time=options.max_time / len(task.groups))
    if task.iteration_time is not None:
        options = replace(options, iteration_time=task.iteration_time / len(task.groups))
    decomposition = decompositions.get(task.decomposition)
    return decomposition.fit(list(task.groups), task.rank, task.seed, decomposition.options(options), init=task.init,
                             moments=task.moments, fitter=fitter)

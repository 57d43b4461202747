"""How ranks are chosen automatically: one frozen object, part of RewriteConfig."""
from __future__ import annotations

from dataclasses import dataclass

from onnx_cp.errors import OnnxCpError, param
from onnx_cp.ranks.refine import check_storage_url

COSTS = ("macs", "latency")


@dataclass(frozen=True)
class RankSelection:
    """Exactly one of ``max_error``, ``target_speedup``, ``budget_macs`` and ``max_drop``.

    max_error: per layer, the smallest rank whose relative kernel error is at most this.
    target_speedup: the whole model must get this much faster (by ``cost``: multiply-adds,
        or measured per-layer latency); the layers that are not rewritten count at full cost.
    budget_macs: the whole model's multiply-adds (Conv, Gemm, MatMul) after the rewrite.
    max_drop: the fastest model whose ``metric`` on ``RewriteConfig.data`` drops by at most this:
        metric units when ``drop`` is "absolute" (0.01: one point of a metric in [0, 1]), a share
        of the original's score when "relative". ``metric``: top1 (the default with labels), top5,
        agreement (the default without: the share of inputs or positions whose argmax matches the
        original's), "MODULE:FUNCTION" or a callable ``f(model_path, data) -> float``, higher is
        better. ``holdout``: the share of the data held back: ranks are chosen on the rest, and the
        drop reported and promised is measured on it.
    calib: an alias of ``RewriteConfig.calib``, kept for older callers (the rewrite reads the
        calibration data once, for the proxy, the fits and recovery); give ``RewriteConfig.calib``.
    calib_count: how many calibration inputs the proxy uses at most (random inputs without
        calibration data, with a note in the report).
    search: Bayesian-optimization trials (optuna) that refine the greedy allocation.
    storage: an RDB URL (``sqlite:///study.db``, ``postgresql://...``) where the search keeps its
        trials, so several processes share one study and a later run resumes it; None: in memory.
    study_name: the study in ``storage``; None: named after the layers and candidate ranks.
    candidates: ranks fitted per layer for the error and cost curves (at least; a model with
        few layers gets more, so that about ``budget.CURVE_FITS`` curve fits are made in all).
    measure: time the original and the rewritten model when a speed-up is targeted, and
        re-allocate (at most ``rounds`` times) when the measured speed-up falls short.
    seed: an alias kept for older callers; the rewrite's seed is ``RewriteConfig.seed``.
    """

    max_error: float | None = None
    target_speedup: float | None = None
    budget_macs: int | None = None
    max_drop: float | None = None
    drop: str = "absolute"
    metric: object = None  # None, "top1", "top5", "agreement", "MODULE:FUNCTION" or a callable
    holdout: float = 0.3
    calib: str | None = None
    calib_count: int = 8
    search: int = 0
    storage: str | None = None
    study_name: str | None = None
    cost: str = "macs"
    candidates: int = 4
    measure: bool = True
    rounds: int = 2
    seed: int = 0

    def __post_init__(self):
        names = ("max_error", "target_speedup", "budget_macs", "max_drop")
        modes = [param(f"selection.{n}") for n in names]
        given = [m for m, n in zip(modes, names) if getattr(self, n) is not None]
        if self.max_drop is not None and len(given) > 1:
            others = [m for m, n in zip(modes, names) if n != "max_drop" and getattr(self, n) is not None]
            raise OnnxCpError(f"{param('selection.max_drop')} and {' and '.join(others)} conflict: the allowed drop "
                              "chooses the fastest model itself; give one of them", usage=True)
        if len(given) != 1:
            raise OnnxCpError(f"give exactly one of {', '.join(modes)}, got {', '.join(given) or 'none'}", usage=True)
        if self.max_drop is not None:
            from onnx_cp.accuracy import Drop

            Drop(self.max_drop, self.drop)  # refuses a bad value or kind in one line
            if not 0.0 < self.holdout < 1.0:
                raise OnnxCpError(f"{param('holdout', repr(self.holdout))} must lie in (0, 1): the share of the "
                                  "data held back to measure the drop", usage=True)
        if self.max_error is not None and not 0.0 < self.max_error < 1.0:
            raise OnnxCpError(f"{param('selection.max_error')} must lie in (0, 1) (a relative kernel error), "
                              f"got {self.max_error}", usage=True)
        if self.target_speedup is not None and not self.target_speedup > 1.0:
            raise OnnxCpError(f"{param('selection.target_speedup')} must be above 1, got {self.target_speedup}",
                              usage=True)
        if self.budget_macs is not None and self.budget_macs < 1:
            raise OnnxCpError(f"{param('selection.budget_macs')} must be a positive number of multiply-adds, "
                              f"got {self.budget_macs}", usage=True)
        if self.cost not in COSTS:
            raise OnnxCpError(f"{param('selection.cost', repr(self.cost))}: choose one of {', '.join(COSTS)}",
                              usage=True)
        if self.cost == "latency" and self.budget_macs is not None:
            raise OnnxCpError(f"{param('selection.budget_macs')} counts multiply-adds; use it with "
                              f"{param('selection.cost', repr('macs'), cli='macs')}, or give "
                              f"{param('selection.target_speedup')} for a latency budget", usage=True)
        if self.search < 0:
            raise OnnxCpError(f"{param('selection.search')} must be 0 or more trials, got {self.search}", usage=True)
        if self.storage is not None:
            if not self.search:
                raise OnnxCpError(f"{param('selection.storage')} keeps the trials of {param('selection.search')}; "
                                  f"give {param('selection.search', 'N', cli='N')} as well",
                                  usage=True)
            check_storage_url(self.storage)
        if self.study_name is not None and (self.storage is None or not self.study_name.strip()):
            raise OnnxCpError(f"{param('selection.study_name')} names a study in {param('selection.storage')}; "
                              f"give {param('selection.storage', 'URL', cli='URL')} and a non-empty name", usage=True)
        if self.calib_count < 1:
            raise OnnxCpError(f"{param('selection.calib_count')} must be at least 1, got {self.calib_count}",
                              usage=True)
        if self.candidates < 2:
            raise OnnxCpError(f"{param('selection.candidates')} must be at least 2, got {self.candidates}", usage=True)

    @property
    def mode(self) -> str:
        if self.max_error is not None:
            return "max-error"
        if self.max_drop is not None:
            return "max-drop"
        return "target-speedup" if self.target_speedup is not None else "budget-macs"

    def describe(self) -> str:
        """The mode and its value in a message: ``selection.target_speedup=3.0`` (``--target-speedup 3.0``)."""
        name = self.mode.replace("-", "_")
        value = getattr(self, name)
        cli = f"{value * 100:g}" if name == "max_drop" else str(value)  # the CLI takes the drop in percent
        return param(f"selection.{name}", repr(value), cli=cli)

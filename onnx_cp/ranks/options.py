"""How ranks are chosen automatically: one frozen object, part of RewriteConfig."""
from __future__ import annotations

from dataclasses import dataclass

from onnx_cp.errors import OnnxCpError, param
from onnx_cp.ranks.refine import check_storage_url

COSTS = ("macs", "latency")


@dataclass(frozen=True)
class RankSelection:
    """Exactly one of ``max_error``, ``target_speedup`` and ``budget_macs``.

    max_error: per layer, the smallest rank whose relative kernel error is at most this.
    target_speedup: the whole model must get this much faster (by ``cost``: multiply-adds,
        or measured per-layer latency); the layers that are not rewritten count at full cost.
    budget_macs: the whole model's multiply-adds (Conv, Gemm, MatMul) after the rewrite.
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
        modes = [param(f"selection.{n}") for n in ("max_error", "target_speedup", "budget_macs")]
        given = [m for m, v in zip(modes, (self.max_error, self.target_speedup, self.budget_macs)) if v is not None]
        if len(given) != 1:
            raise OnnxCpError(f"give exactly one of {', '.join(modes)}, got {', '.join(given) or 'none'}", usage=True)
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
        return "target-speedup" if self.target_speedup is not None else "budget-macs"

    def describe(self) -> str:
        """The mode and its value in a message: ``selection.target_speedup=3.0`` (``--target-speedup 3.0``)."""
        name = self.mode.replace("-", "_")
        value = getattr(self, name)
        return param(f"selection.{name}", repr(value), cli=str(value))

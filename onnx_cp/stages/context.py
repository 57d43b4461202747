"""The state one rewrite carries from stage to stage, and the one record of each selected layer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnx_cp.decision import Decision
from onnx_cp.progress import Progress
from onnx_cp.sites import Site


@dataclass(frozen=True)
class Candidate:
    """A way to rewrite one layer: a form (of any decomposition) at that decomposition's rank."""

    form: str
    rank: object


def fit_key(site: Site, candidate: Candidate, per_site: bool) -> tuple:
    """Layers sharing a weight share a fit of one decomposition at one rank, unless their inputs
    (and so their data-aware fits, ``per_site``) differ."""
    from onnx_cp.decompositions import for_form

    key = (site.weight_source, for_form(candidate.form).name, candidate.rank)
    return key + ((site.key,) if per_site else ())


@dataclass
class LayerRecord:
    """One selected layer, from its plan to its report row."""

    site: Site
    decision: Decision
    candidates: list[Candidate] = field(default_factory=list)  # what may replace the layer
    timings: dict[str, float] = field(default_factory=dict)  # "original" and each form, timed alone (ms)
    form: str | None = None  # the form it takes; "original" when it keeps its Conv untimed-out
    fit: Any = None  # decompositions.Factors of the form written
    kernel_error: float | None = None  # ||W - W_hat|| / ||W|| of the fit, before any recovery
    kept_because: str | None = None  # set when a later timing gave the Conv back
    extra_timings: dict[str, float] = field(default_factory=dict)
    recovery: Any = None  # calibrate.LayerRecovery, with --calib

    @property
    def rewritten(self) -> bool:
        return self.fit is not None and self.form not in (None, "original") and self.kept_because is None

    def replacement(self):
        from onnx_cp.splice import Replacement

        return Replacement(self.site, self.form, self.decision.rank, list(self.fit.groups))


@dataclass
class Rewrite:
    """One rewrite as its stages go: the input, what was found and decided, what was built."""

    model: onnx.ModelProto  # the input, never modified
    config: Any  # RewriteConfig
    shapes: dict
    sites: list[Site]
    chosen: set[str]  # keys of the selected sites
    notes: list[str]
    progress: Progress | None = None
    fitter: Any = None  # a replacement for the CP solver (tests)
    measurement: Any = None  # measure.Measurement, or None when nothing is timed
    data: Any = None  # calibrate.CalibrationData, where calibration data or a proxy is needed
    calibration: Any = None  # calibrate.Calibration, with --calib
    records: list[LayerRecord] = field(default_factory=list)  # the selected layers, in graph order
    selection: Any = None  # ranks.SelectionSummary, with rank selection
    fits: dict = field(default_factory=dict)  # fits already made, by ``fit_key``
    final: onnx.ModelProto | None = None  # the model to write
    new_names: dict = field(default_factory=dict)  # site key -> names of the nodes that replaced it
    speed: Any = None  # measure.SpeedCheck of the written model against the input
    quantization: Any = None  # stages.quantize.QuantizationSummary, with quantize='int8'
    int8_input: onnx.ModelProto | None = None  # the input in INT8, where rank selection made it already
    accuracy: Any = None  # accuracy.AccuracyTarget, with selection.max_drop
    held: Any = None  # stages.hold.AccuracySummary: the drop measured on the written model
    deadline: float | None = None  # time.perf_counter() by which the max_drop search must end
    sensitivity: list = field(default_factory=list)  # max_drop: ranks.drop.Sensitivity per automatic layer

    def time_left(self) -> float | None:
        """Seconds left of --time-budget (at least 1), or None without one."""
        return None if self.deadline is None else max(1.0, self.deadline - time.perf_counter())

    def rewritten(self) -> list[LayerRecord]:
        return [r for r in self.records if r.rewritten]

    def record(self, key: str) -> LayerRecord | None:
        return next((r for r in self.records if r.site.key == key), None)

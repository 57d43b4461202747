"""What rank selection decided: a Decision per layer, the typed summary of how, and the plan holding both."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from onnx_cp.decision import Decision


@dataclass
class MeasuredRound:
    """One timing of the whole rewritten model against the input (--target-speedup)."""

    predicted_speedup: float
    measured_speedup: float
    original_ms: float
    rewritten_ms: float
    spread: float
    output_error: float | None


@dataclass
class SelectionSummary:
    """How the ranks were chosen. ``to_dict`` is the report's ``rank_selection`` entry (its keys
    are part of the JSON report: keep them)."""

    mode: str  # max-error | target-speedup | budget-macs
    cost: str | None = None  # macs | latency (budget modes)
    max_error: float | None = None
    total_before: float | None = None  # the whole model's cost, in the cost unit
    fixed: float | None = None  # what the automatically ranked layers do not cost
    target_total: float | None = None
    budget: float | None = None  # for the automatically ranked layers
    total_after: float | None = None
    predicted_speedup: float | None = None
    calibration: dict | None = None  # {"source": path or "random", "inputs": n}
    starts: dict[str, float] = field(default_factory=dict)  # start allocation -> output error
    greedy_output_error: float | None = None
    output_error: float | None = None  # of the kept allocation, with the curves' quick fits
    final_output_error: float | None = None  # the same allocation once its layers are fully fitted
    search_trials: int | None = None
    rounds: list[MeasuredRound] = field(default_factory=list)
    kept_round: int | None = None  # 1-based
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per step
    decompositions: dict[str, int] | None = None  # --decomposition auto: layers rewritten by each
    # --decomposition auto: the factor on every option's latency that put the latency model's
    # prediction for the cheapest candidates on their measured time
    latency_scale: float | None = None
    # quantize='int8': how much faster INT8 alone made the input, which the float plan started from
    end_gain: float | None = None
    # quantize='int8': the first round's rewrite in float and in INT8 (ms), and which the rounds timed
    end_form: dict | None = None
    # max_drop: the original's score on the choosing part, and every allocation the search scored
    baseline: float | None = None
    trials: list[dict] | None = None

    @property
    def measured(self) -> MeasuredRound | None:
        return self.rounds[self.kept_round - 1] if self.rounds and self.kept_round else None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "kept_round"}
        if self.kept_round is not None:
            out["kept_round"] = self.kept_round
        if self.measured is not None:
            out["measured"] = asdict(self.measured)
        return out


@dataclass
class RankPlan:
    choices: dict[str, Decision]  # Site.key -> the layer's decision
    summary: SelectionSummary
    notes: list[str] = field(default_factory=list)
    layers: list = field(default_factory=list)  # budget modes: every automatic layer and its curves
    picks: list[int] = field(default_factory=list)  # the chosen option of each (len(ranks): keep the Conv)
    sensitivity: list = field(default_factory=list)  # max_drop: ranks.drop.Sensitivity per automatic layer
    int8_input: Any = None  # with quantize: the input in INT8, as the selection timed it

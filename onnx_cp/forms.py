"""Which form each layer takes, by time measured in onnxruntime: before fitting and after.

Time does not depend on the weights' values, so the forms are chosen before any fit, on the
model with placeholder factors at the layers' ranks: a layer that no form makes faster is never
fitted (the forms of the chosen decomposition, or with ``--decomposition auto`` every
candidate). After the fits the chosen mix is timed once more (a layer's time depends on its
neighbours' forms: where a chain leaves onnxruntime's blocked NCHWc layout, the layout
conversion lands on the layer next to it), and finally the whole model against the input.
Layers are timed in place, so onnxruntime's fusions and layout changes around them count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import onnx

from onnx_cp.discover import ConvSite
from onnx_cp.errors import OnnxCpError
from onnx_cp.realize import REALIZATIONS
from onnx_cp.splice import Replacement, placeholder_factors, splice

# models -> per model, {Conv output tensor name: median ms per run of everything attributed to it}
LayerTimer = Callable[[Sequence[onnx.ModelProto]], list[dict[str, float]]]
# Milliseconds of onnxruntime time each variant gets when layers are profiled, and the bounds
# on the number of runs that gives (a 300 ms VGG-16 gets 5 runs, a 3 ms MNIST CNN 30).
PROFILE_BUDGET_MS = 1500.0
RUNS_MIN, RUNS_MAX = 5, 30


@dataclass(frozen=True)
class Timing:
    """Per-layer profiles and whole-model latency of models, as onnxruntime runs them."""

    layers: LayerTimer
    whole: Callable[[Sequence[onnx.ModelProto]], list[float]]  # median ms per model, alternated


@dataclass
class FormChoice:
    kind: str  # a form (cp4, cp3, tucker2, svd, gkpd, lrcp4, lrcp3) or original
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeedCheck:
    original_ms: float
    rewritten_ms: float

    @property
    def speedup(self) -> float:
        return self.original_ms / self.rewritten_ms if self.rewritten_ms > 0 else math.inf

    def to_dict(self) -> dict:
        return {"original_ms": self.original_ms, "rewritten_ms": self.rewritten_ms, "speedup": self.speedup}


def from_layer_timer(timer: LayerTimer) -> Timing:
    """A Timing from a per-layer timer alone (tests inject one): a model's time is its layers' sum."""
    return Timing(timer, lambda models: [sum(t.values()) for t in timer(models)])


def onnxruntime_timing(model: onnx.ModelProto, threads: int, opt_level: str,
                       input_shapes: Mapping[str, tuple[int, ...]]) -> Timing:
    """Timing in onnxruntime's CPU EP, with as many runs as fit the profiling budget.

    Runs the model once first, so a model that onnxruntime cannot run at these shapes fails
    here, before anything is fitted.
    """
    from onnx_cp.bench import measure_latency, profile_outputs
    from onnx_cp.runtime import first_line

    shapes = dict(input_shapes)
    try:
        probe, = measure_latency([model], threads=threads, warmup=1, runs=2, input_shapes=shapes,
                                 opt_level=opt_level)
    except Exception as exc:  # OnnxCpError from the feeds, onnxruntime's own from the session
        raise OnnxCpError(f"onnxruntime cannot run the model to time it ({first_line(exc)})") from exc
    runs = int(min(RUNS_MAX, max(RUNS_MIN, PROFILE_BUDGET_MS / max(probe.median, 1e-3))))
    warmup = max(1, runs // 6)

    def layers(models):
        return [per_layer for _, per_layer in profile_outputs(
            list(models), threads=threads, warmup=warmup, runs=runs, input_shapes=shapes, opt_level=opt_level)]

    def whole(models):
        stats = measure_latency(list(models), threads=threads, warmup=warmup, runs=2 * runs,
                                input_shapes=shapes, opt_level=opt_level)
        return [s.median for s in stats]

    return Timing(layers, whole)


@dataclass(frozen=True)
class Candidate:
    """A way to rewrite one layer: a form (of any decomposition) at that decomposition's rank."""

    form: str
    rank: object


def time_candidates(model: onnx.ModelProto, layers: Sequence[tuple[ConvSite, Sequence[Candidate]]],
                    timing: Timing) -> dict[str, dict[str, float]]:
    """Per site key, ``{"original": ms, form: ms, ...}``: the model as it is, then one variant per
    candidate position (every layer in its i-th candidate), all with placeholder factors."""
    count = max((len(c) for _, c in layers), default=0)
    variants = [model] + [
        splice(model, [Replacement(site, c[i].form, c[i].rank, placeholder_factors(site, c[i].rank, form=c[i].form))
                       for site, c in layers if i < len(c)])[0]
        for i in range(count)]
    per_model = timing.layers(variants)
    timed = {}
    for site, candidates in layers:
        out = site.node.output[0]
        names = ["original"] + [c.form for c in candidates]
        timed[site.key] = {name: times[out] for name, times in zip(names, per_model) if out in times}
    return timed


def choose_forms(model: onnx.ModelProto, ranked: Sequence[tuple[ConvSite, object]], timing: Timing,
                 forms: Sequence[str] = REALIZATIONS) -> dict[str, FormChoice]:
    """Each layer's fastest form at its rank (``original`` when none of ``forms`` beats the Conv),
    from profiles of the model as it is and with every layer in each form, placeholder factors."""
    timed = time_candidates(model, [(site, [Candidate(f, rank) for f in forms]) for site, rank in ranked], timing)
    choices = {}
    for site, _ in ranked:
        timings = timed[site.key]
        kind = min(timings, key=timings.get) if "original" in timings and len(timings) > 1 else forms[0]
        choices[site.key] = FormChoice(kind, timings)
    return choices


def slower_layers(model: onnx.ModelProto, rewritten: onnx.ModelProto, sites: Sequence[ConvSite],
                  timing: Timing) -> dict[str, tuple[float, float]]:
    """The sites whose rewritten form, timed among the chosen forms, is slower than their Conv:
    key -> (ms among the chosen forms, ms of the original beside them)."""
    before, after = timing.layers([model, rewritten])
    slower = {}
    for site in sites:
        out = site.node.output[0]
        if out in before and out in after and after[out] > before[out]:
            slower[site.key] = (after[out], before[out])
    return slower


def check_speed(model: onnx.ModelProto, rewritten: onnx.ModelProto, timing: Timing) -> SpeedCheck:
    """The input and the rewritten model, run in alternation."""
    original_ms, rewritten_ms = timing.whole([model, rewritten])
    return SpeedCheck(original_ms, rewritten_ms)

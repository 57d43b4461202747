"""How a rewrite times models in onnxruntime: one service, built once per rewrite and passed to
every step that needs a time (the forms, rank selection's latency probe and measured rounds, the
final check of the written model).

It owns the run policy: every model of a call gets its own session and the same inputs, and the
models run in alternation, warm-up included, so drift hits all alike; the number of runs adapts
to the model's speed (``RunPolicy``); whole models are timed by the protocol ``onnx-cp bench``
uses too (bench.latency.measure_sources, docs/latency.md "Measurement protocol"): blocks of
alternated runs until each model's median settles, so the rewrite's closing line and ``bench``
on the same two files agree. It also
owns the variants that time forms before any fit: placeholder factors spliced in at given ranks
(time does not depend on the values). Tests inject a computed timing (``Measurement.injected``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.splice import Replacement, splice

# A comparison whose runs spread wider than this, (p90 - p10) / median, was timed on a busy
# machine: a VGG-16 closing line at 24% read 3.32x where bench read 3.11x; quiet runs spread 7% to 11%.
NOISY = 0.15
# Below this width of runs (ms) a spread is the timer's and the scheduler's jitter, not a busy machine.
JITTER_MS = 0.05
# How many more times a busy comparison is timed before the steadiest is kept.
RETRIES = 2

# models -> per model, {layer output name: median ms per run of everything attributed to it}
LayerTimer = Callable[[Sequence[onnx.ModelProto]], list[dict[str, float]]]


@dataclass(frozen=True)
class RunPolicy:
    """How many runs each measurement gets."""

    # onnxruntime time each model gets when layers are profiled, and the bounds on the number of
    # runs that gives (a 300 ms VGG-16 gets 5 runs, a 3 ms MNIST CNN 30)
    budget_ms: float = 1500.0
    run_bounds: tuple[int, int] = (5, 30)
    # whole models: at most so many blocks of alternated runs (bench.latency.measure_sources)
    blocks: int = 4

    def runs(self, median_ms: float) -> int:
        low, high = self.run_bounds
        return int(min(high, max(low, self.budget_ms / max(median_ms, 1e-3))))

    @staticmethod
    def warmup(runs: int) -> int:
        return max(1, runs // 6)


@dataclass(frozen=True)
class Latency:
    """A model's median time per run and the relative width of its runs, (p90 - p10) / median."""

    median: float
    spread: float = 0.0


@dataclass(frozen=True)
class SpeedCheck:
    """The input and the rewritten model, timed in alternation."""

    original_ms: float
    rewritten_ms: float
    spread: float = 0.0  # the larger of the two models' (p90 - p10) / median

    @property
    def speedup(self) -> float:
        return self.original_ms / self.rewritten_ms if self.rewritten_ms > 0 else math.inf

    @property
    def busy(self) -> bool:
        """Timed on a busy machine: runs wider than ``NOISY`` and than the timer's own jitter (a
        0.05 ms model's runs spread 30% to 50% on a quiet machine)."""
        return self.spread > NOISY and self.spread * min(self.original_ms, self.rewritten_ms) > JITTER_MS

    def to_dict(self) -> dict:
        return {"original_ms": self.original_ms, "rewritten_ms": self.rewritten_ms, "speedup": self.speedup,
                "spread": self.spread, "busy": self.busy}


class Timer(Protocol):
    """What tests inject: per-layer times and whole-model times of models (ms)."""

    def layers(self, models: Sequence[onnx.ModelProto]) -> list[dict[str, float]]: ...

    def whole(self, models: Sequence[onnx.ModelProto]) -> list[float]: ...


# (site, form, rank): one layer in a form at a rank, with placeholder factors
Placement = tuple[object, str, object]


class Measurement:
    """Times models: per-layer profiles (``layers``), whole models (``whole``, ``compare``)."""

    def __init__(self, layers: LayerTimer, whole: Callable[[Sequence[onnx.ModelProto]], list[Latency]],
                 policy: RunPolicy = RunPolicy(),
                 profiles: Callable[[Sequence[onnx.ModelProto]], list[tuple[float | None, dict[str, float]]]]
                 | None = None):
        self._layers, self._whole, self.policy = layers, whole, policy
        self._profiles = profiles or (lambda models: [(None, t) for t in layers(models)])

    @classmethod
    def onnxruntime(cls, model: onnx.ModelProto, threads: int, opt_level: str,
                    input_shapes: Mapping[str, tuple[int, ...]], policy: RunPolicy = RunPolicy()) -> "Measurement":
        """Timing in onnxruntime's CPU EP. Runs the model once first, so a model that onnxruntime
        cannot run at these shapes fails here, before anything is fitted."""
        from onnx_cp.bench import measure_latency, profile_outputs
        from onnx_cp.runtime import first_line

        shapes = dict(input_shapes)
        try:
            probe, = measure_latency([model], threads=threads, warmup=1, runs=2, input_shapes=shapes,
                                     opt_level=opt_level)
        except Exception as exc:  # OnnxCpError from the feeds, onnxruntime's own from the session
            raise OnnxCpError(f"onnxruntime cannot run the model to time it ({first_line(exc)})") from exc
        runs = policy.runs(probe.median)
        warmup = policy.warmup(runs)

        def profiles(models):
            return profile_outputs(list(models), threads=threads, warmup=warmup, runs=runs, input_shapes=shapes,
                                   opt_level=opt_level)

        def layers(models):
            return [per_layer for _, per_layer in profiles(models)]

        def whole(models):
            stats = measure_latency(list(models), threads=threads, warmup=warmup, runs=runs,
                                    input_shapes=shapes, opt_level=opt_level, blocks=policy.blocks)
            return [Latency(s.median, s.spread) for s in stats]

        return cls(layers, whole, policy, profiles)

    @classmethod
    def injected(cls, timer: Timer | LayerTimer) -> "Measurement":
        """A computed timing (tests): an object with ``layers`` and ``whole``, or a layer timer
        alone, whose model time is then its layers' sum."""
        layers = timer.layers if hasattr(timer, "layers") else timer
        if hasattr(timer, "whole"):
            def whole(models):
                return [t if isinstance(t, Latency) else Latency(float(t)) for t in timer.whole(models)]
        else:
            def whole(models):
                return [Latency(sum(t.values())) for t in layers(models)]
        return cls(layers, whole, RunPolicy(blocks=1))

    def layers(self, models: Sequence[onnx.ModelProto]) -> list[dict[str, float]]:
        """Per model, each layer's time (keyed by the output name of the node it replaced)."""
        return self._layers(models)

    def whole(self, models: Sequence[onnx.ModelProto]) -> list[Latency]:
        """Each model's median time per run, the models run in alternation."""
        return self._whole(models)

    def compare(self, model: onnx.ModelProto, rewritten: onnx.ModelProto) -> SpeedCheck:
        """The two models timed together by the measurement protocol; timed again, at most
        ``RETRIES`` more times, while the machine was busy (``SpeedCheck.busy``), the steadiest kept."""
        best = None
        for _ in range(1 + RETRIES):
            base, new = self.whole([model, rewritten])
            check = SpeedCheck(base.median, new.median, max(base.spread, new.spread))
            best = check if best is None or check.spread < best.spread else best
            if not best.busy:
                break
        return best

    @staticmethod
    def variant(model: onnx.ModelProto, placements: Sequence[Placement], seed: int = 0) -> onnx.ModelProto:
        """``model`` with each placed layer in its form at its rank, placeholder factors: what a
        form costs in onnxruntime, before anything is fitted."""
        return splice(model, [Replacement.placeholder(site, form, rank, seed) for site, form, rank in placements])[0]

    def profile_variants(self, model: onnx.ModelProto, variants: Sequence[Sequence[Placement]],
                         finish: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
                         ) -> list[tuple[float | None, dict[str, float]]]:
        """Per-layer times of ``model`` itself, then of each variant (placeholder factors), with each
        profiled run's own median total (None where the timer has none): profiled runs take longer
        than plain ones, by the profiler's cost per node. With
        ``finish``, each model is timed as it makes it (quantized: the end form of --quantize)."""
        models = [model] + [self.variant(model, v) for v in variants]
        if not finish:
            return self._profiles(models)
        fused = fused_activations(model)
        return [(total, _keyed_as_float(times, fused)) for total, times in self._profiles([finish(m) for m in models])]



# Activations onnxruntime's quantizer folds into the layer before them: in QDQ it puts no
# quantize/dequantize pair between a Conv and its Relu or Clip, the uint8 range does the clipping,
# and the layer is then profiled under the activation's output, not its own.
FUSED_ACTIVATIONS = ("Relu", "Clip")


def fused_activations(model: onnx.ModelProto) -> dict[str, str]:
    """Activation output -> the output of the layer it alone reads (the layer INT8 fuses it into)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return {nodes[0].output[0]: name for name, nodes in readers.items()
            if len(nodes) == 1 and nodes[0].op_type in FUSED_ACTIVATIONS}


def _keyed_as_float(times: dict[str, float], fused: Mapping[str, str]) -> dict[str, float]:
    """A profile of a model in INT8 keyed as the float model's: a layer found under the activation
    it was fused with is put back under its own output."""
    return {(fused[key] if key in fused and fused[key] not in times else key): ms for key, ms in times.items()}

"""Whole-model latency in onnxruntime's CPU execution provider."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from onnx_cp.bench.config import BenchConfig
from onnx_cp.bench.feeds import make_feeds
from onnx_cp.bench.runner import Callback, alternate
from onnx_cp.bench.source import ModelLike, ModelSource, load_models


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of ``session.run`` over ``runs`` timed runs, in milliseconds.

    spread = (p90 - p10) / median: a relative width; above ~0.1 the machine was noisy.
    """

    median: float
    p10: float
    p90: float
    mean: float
    min: float
    spread: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("LatencyStats needs at least one sample")
        p10, median, p90 = (float(v) for v in np.percentile(a, [10, 50, 90]))
        spread = (p90 - p10) / median if median > 0 else 0.0
        return cls(median, p10, p90, float(a.mean()), float(a.min()), spread, int(a.size))

    def to_dict(self) -> dict:
        return {"median_ms": self.median, "p10_ms": self.p10, "p90_ms": self.p90, "mean_ms": self.mean,
                "min_ms": self.min, "spread": self.spread, "runs": self.runs}


def measure_latency(models: Sequence[ModelLike], *, threads: int = 1, warmup: int = 10, runs: int = 50,
                    input_shapes: Mapping[str, tuple[int, ...]] | None = None, batch: int = 1,
                    opt_level: str = "all", seed: int = 0, feeds: Mapping[str, np.ndarray] | None = None,
                    callback: Callback = None, blocks: int = 1) -> list[LatencyStats]:
    """Median and spread of each model's latency, one LatencyStats per model, in order.

    Each model gets one session; all are fed the same random inputs (or ``feeds``) and run in
    alternation, warm-up included, so drift affects every model alike; ``blocks`` > 1 repeats
    the runs until the medians settle (``measure_sources``).
    """
    config = BenchConfig(threads=threads, warmup=warmup, runs=runs, input_shapes=input_shapes or {},
                         batch=batch, opt_level=opt_level, seed=seed, blocks=blocks)
    stats, _ = measure_sources(load_models(models), config, feeds=feeds, callback=callback)
    return stats


def measure_sources(sources: Sequence[ModelSource], config: BenchConfig, *,
                    feeds: Mapping[str, np.ndarray] | None = None,
                    callback: Callback = None) -> tuple[list[LatencyStats], dict[str, np.ndarray]]:
    """measure_latency on loaded models; also returns the inputs used, for profiling the same.

    The measurement protocol (docs/latency.md): one session per model, the same inputs for all,
    ``warmup`` untimed rounds, then blocks of ``runs`` timed rounds in alternation (the first
    model of a round rotates), repeated until every model's median agrees across the blocks
    within ``config.agreement``, at most ``config.blocks`` blocks; the statistics pool all runs."""
    options = config.session_options()
    sessions = [source.session(options) for source in sources]
    labels = [source.label for source in sources]
    if feeds is None:
        feeds = make_feeds(sessions, labels, input_shapes=config.input_shapes, batch=config.batch,
                           seed=config.seed)
    samples: list[list[float]] = [[] for _ in sessions]
    medians: list[list[float]] = [[] for _ in sessions]
    for block in range(config.blocks):
        runs = alternate(sessions, labels, feeds, warmup=config.warmup if block == 0 else 0, runs=config.runs,
                         phase="latency", callback=callback)
        for pooled, own, new in zip(samples, medians, runs):
            pooled.extend(new)
            own.append(float(np.median(new)))
        if block and all(half_range(m) <= config.agreement for m in medians):
            break
    return [LatencyStats.from_samples(s) for s in samples], dict(feeds)


def half_range(values: Sequence[float]) -> float:
    """Half the range of ``values`` relative to their median (0 for one value)."""
    if len(values) < 2:
        return 0.0
    middle = float(np.median(values))
    return (max(values) - min(values)) / 2 / middle if middle > 0 else 0.0

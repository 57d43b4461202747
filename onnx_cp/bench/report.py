"""One benchmark end to end: latency of every model, optionally per-layer profiles and comparisons."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from onnx_cp.bench.compare import Comparison, compare
from onnx_cp.bench.config import BenchConfig
from onnx_cp.bench.latency import LatencyStats, measure_sources
from onnx_cp.bench.profile import NodeProfile, profile_sources
from onnx_cp.bench.runner import Callback
from onnx_cp.bench.source import ModelLike, load_models
from onnx_cp.machine import Machine, describe_machine

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelResult:
    label: str
    latency: LatencyStats
    profile: NodeProfile | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "latency": self.latency.to_dict(),
                "per_node": self.profile.to_dict() if self.profile else None}


@dataclass(frozen=True)
class BenchReport:
    """Everything a benchmark found. ``comparisons`` pit the first model against each other one;
    ``machine`` says where the times were taken."""

    config: BenchConfig
    inputs: dict[str, tuple[tuple[int, ...], str]]
    models: tuple[ModelResult, ...]
    comparisons: tuple[Comparison, ...] = ()
    machine: Machine = field(default_factory=describe_machine)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(note for m in self.models if m.profile for note in m.profile.notes)

    def to_dict(self) -> dict:
        return {
            "onnx_cp_bench": SCHEMA_VERSION,
            "settings": self.config.to_dict(),
            "machine": self.machine.to_dict(),
            "inputs": {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in self.inputs.items()},
            "models": [m.to_dict() for m in self.models],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "notes": list(self.notes),
        }


def run_bench(models: Sequence[ModelLike], config: BenchConfig = BenchConfig(), *, per_node: bool = False,
              callback: Callback = None) -> BenchReport:
    """Measure every model's latency (alternating, same inputs); with ``per_node`` also profile each
    and compare the first model layer by layer against each other one."""
    sources = load_models(models)
    stats, feeds = measure_sources(sources, config, callback=callback)
    profiles: list[NodeProfile | None] = [None] * len(sources)
    comparisons: list[Comparison] = []
    if per_node:
        profiles = list(profile_sources(sources, config, feeds=feeds, callback=callback))
        for i in range(1, len(sources)):
            comparisons.append(compare(profiles[0], profiles[i], latency=(stats[0], stats[i])))
    results = tuple(ModelResult(s.label, st, p) for s, st, p in zip(sources, stats, profiles))
    inputs = {name: (tuple(a.shape), str(a.dtype)) for name, a in feeds.items()}
    return BenchReport(config, inputs, results, tuple(comparisons))

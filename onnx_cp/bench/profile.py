"""Per-layer time from onnxruntime's profiler, attributed to the original model's nodes."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx

from onnx_cp.bench.attribution import Attribution
from onnx_cp.bench.config import BenchConfig
from onnx_cp.bench.feeds import make_feeds
from onnx_cp.bench.runner import Callback, alternate
from onnx_cp.bench.source import ModelLike, ModelSource, load_models
from onnx_cp.bench.trace import TraceRuns, load_trace, split_runs
from onnx_cp.bench.transforms import describe_transforms
from onnx_cp.provenance import CpLayer, read_cp_layers

if TYPE_CHECKING:
    import onnxruntime as ort


@dataclass(frozen=True)
class NodeTime:
    """One node as onnxruntime ran it: median kernel time per run, and how it was attributed."""

    name: str
    op: str
    ms: float
    how: str

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "ms": self.ms, "how": self.how}


@dataclass(frozen=True)
class LayerTime:
    """One layer (a node of the original model): median per-run time of everything attributed to it."""

    layer: str
    op: str
    ms: float
    share: float
    nodes: tuple[NodeTime, ...]
    outputs: tuple[str, ...]
    mapped: bool

    def to_dict(self) -> dict:
        return {"layer": self.layer, "op": self.op, "ms": self.ms, "share": self.share, "mapped": self.mapped,
                "outputs": list(self.outputs), "nodes": [n.to_dict() for n in self.nodes]}


@dataclass(frozen=True)
class NodeProfile:
    """A model's profile by layer, in graph order (unmapped nodes last).

    total_ms is the median per-run sum of kernel times (below the whole-model latency: it leaves
    out the executor's own overhead and includes profiler overhead).
    """

    label: str
    layers: tuple[LayerTime, ...]
    total_ms: float
    runs: int
    cp_layers: Mapping[str, CpLayer]
    notes: tuple[str, ...] = ()

    def layer(self, name: str) -> LayerTime | None:
        return next((layer for layer in self.layers if layer.layer == name), None)

    def to_dict(self) -> dict:
        return {"total_ms": self.total_ms, "runs": self.runs, "layers": [layer.to_dict() for layer in self.layers],
                "cp_layers": {k: v.to_dict() for k, v in self.cp_layers.items()}, "notes": list(self.notes)}


def profile_nodes(models: Sequence[ModelLike], *, threads: int = 1, warmup: int = 10, runs: int = 50,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None, batch: int = 1,
                  opt_level: str = "all", seed: int = 0, feeds: Mapping[str, np.ndarray] | None = None,
                  callback: Callback = None) -> list[NodeProfile]:
    """Profile each model in onnxruntime (sessions alternating, same inputs), one NodeProfile each.

    The ``warmup`` runs are profiled too but dropped from the result.
    """
    config = BenchConfig(threads=threads, warmup=warmup, runs=runs, input_shapes=input_shapes or {},
                         batch=batch, opt_level=opt_level, seed=seed)
    return profile_sources(load_models(models), config, feeds=feeds, callback=callback)


def profile_outputs(models: Sequence[ModelLike], *, threads: int = 1, warmup: int = 10, runs: int = 50,
                    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                    opt_level: str = "all") -> list[tuple[float, dict[str, float]]]:
    """Per model: (median total ms, {output tensor name: median ms of the layer that computes it}).

    The per-layer timing that choosing ranks and forms needs: ``profile_nodes``, keyed by the
    tensors each original node outputs, so the rewritten model's layers line up with the input's.
    """
    profiles = profile_nodes(models, threads=threads, warmup=warmup, runs=runs, input_shapes=input_shapes,
                             opt_level=opt_level)
    return [(p.total_ms, {out: layer.ms for layer in p.layers for out in layer.outputs}) for p in profiles]


def profile_sources(sources: Sequence[ModelSource], config: BenchConfig, *,
                    feeds: Mapping[str, np.ndarray] | None = None, callback: Callback = None) -> list[NodeProfile]:
    """profile_nodes on loaded models."""
    labels = [source.label for source in sources]
    with tempfile.TemporaryDirectory(prefix="onnx-cp-bench-") as tmp:
        sessions, optimized_paths, notes = [], [], []
        for i, source in enumerate(sources):
            session, optimized, note = _profiling_session(source, config, Path(tmp), i)
            sessions.append(session)
            optimized_paths.append(optimized)
            notes.append([note] if note else [])
        if feeds is None:
            feeds = make_feeds(sessions, labels, input_shapes=config.input_shapes, batch=config.batch,
                               seed=config.seed)
        alternate(sessions, labels, feeds, warmup=config.warmup, runs=config.runs, phase="profile",
                  callback=callback)
        profiles = []
        for source, session, optimized, extra in zip(sources, sessions, optimized_paths, notes):
            trace = split_runs(load_trace(session.end_profiling()), skip=config.warmup)
            graph = onnx.load(str(optimized), load_external_data=False).graph if optimized else None
            if graph is not None:
                extra = extra + list(describe_transforms(source.proto.graph, graph, source.label))
            cp_layers, meta_notes = read_cp_layers(source.proto)
            attribution = Attribution(source.proto, cp_layers, graph)
            profiles.append(aggregate(trace, attribution, label=source.label, cp_layers=cp_layers,
                                      notes=tuple(extra + meta_notes)))
        del sessions
    return profiles


def aggregate(trace: TraceRuns, attribution: Attribution, *, label: str,
              cp_layers: Mapping[str, CpLayer], notes: tuple[str, ...] = ()) -> NodeProfile:
    """Sum each run's node times by layer and take medians over runs."""
    names = sorted({name for run in trace.runs for name in run})
    resolved = {name: attribution.resolve(name, trace.ops.get(name)) for name in names}
    layer_names = list(dict.fromkeys(resolved[name].layer for name in names))
    if not trace.runs:
        return NodeProfile(label, (), 0.0, 0, cp_layers, notes + ("the profile holds no timed runs",))
    node_ms = {name: float(np.median([run.get(name, 0.0) for run in trace.runs])) / 1e3 for name in names}
    layer_ms = {}
    for layer in layer_names:
        members = [name for name in names if resolved[name].layer == layer]
        layer_ms[layer] = float(np.median([sum(run.get(n, 0.0) for n in members) for run in trace.runs])) / 1e3
    total_ms = float(np.median([sum(run.values()) for run in trace.runs])) / 1e3
    shares_of = sum(layer_ms.values()) or 1.0
    unmapped_rank = len(attribution.order)

    def order(layer: str) -> tuple[int, str]:
        return (attribution.order.get(layer, unmapped_rank), layer)

    layers = []
    for layer in sorted(layer_names, key=order):
        members = [name for name in names if resolved[name].layer == layer]
        members.sort(key=lambda n: -node_ms[n])
        nodes = tuple(NodeTime(n, trace.ops.get(n, "?"), node_ms[n], resolved[n].how) for n in members)
        op = attribution.op.get(layer) or nodes[0].op
        layers.append(LayerTime(layer, op, layer_ms[layer], layer_ms[layer] / shares_of, nodes,
                                attribution.outputs.get(layer, ()), all(resolved[n].mapped for n in members)))
    unmapped = [name for name in names if not resolved[name].mapped]
    if unmapped:
        notes = notes + (f"{len(unmapped)} profiled node(s) of {label} match no node of the model and are "
                         f"listed under their own names: {', '.join(unmapped[:5])}"
                         + (", ..." if len(unmapped) > 5 else ""),)
    return NodeProfile(label, tuple(layers), total_ms, len(trace.runs), cp_layers, notes)


def _profiling_session(source: ModelSource, config: BenchConfig, tmp: Path,
                       index: int) -> tuple[ort.InferenceSession, Path | None, str | None]:
    """A session that profiles and saves its optimized graph (to map generated node names)."""
    options = _options(config, tmp, index)
    optimized = tmp / f"optimized_{index}.onnx"
    options.optimized_model_filepath = str(optimized)
    # Weights go to a side file we never read: only the graph is needed.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     f"optimized_{index}.bin")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "0")
    try:
        session = source.session(options)
    except Exception:  # saving the optimized graph can fail (size, custom ops); profile without it
        session = source.session(_options(config, tmp, index))
        return session, None, (f"onnxruntime could not save the optimized graph of {source.label}; "
                               f"nodes it generated are listed under their own names")
    return session, optimized if optimized.exists() else None, None


def _options(config: BenchConfig, tmp: Path, index: int) -> ort.SessionOptions:
    options = config.session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / f"profile_{index}")
    options.log_severity_level = 3  # saving an NCHWc-optimized graph warns about hardware-specific ops
    return options

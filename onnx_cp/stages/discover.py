"""The first stage: load the model, find its sites, select the layers, and build the services the
later stages share (the measurement of times, the calibration data), refusing what cannot work
(dynamic sizes to time at, unreadable calibration data) before any fit."""
from __future__ import annotations

import fnmatch
import os
import time

import onnx

from onnx_cp import decompositions
from onnx_cp.calibrate.data import CalibrationData
from onnx_cp.calibrate.session import Calibration
from onnx_cp.config import RewriteConfig, rank_param
from onnx_cp.errors import OnnxCpError, marked, param, shape_param, spelled
from onnx_cp.measure import Measurement
from onnx_cp.model_io import load_model
from onnx_cp.progress import Progress
from onnx_cp.graph import runtime_inputs
from onnx_cp.shapes import dynamic_dims, infer_shapes
from onnx_cp.sites import LIST_LAYERS, Site, find_sites
from onnx_cp.stages.context import Rewrite


def start(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig, *, progress: Progress | None = None,
          fitter=None, timer=None) -> Rewrite:
    """The rewrite's state after discovery: sites found, layers selected, services built."""
    started = time.perf_counter()
    model = load_model(model)
    if config.quantize is not None:
        from onnx_cp.quantize import refusal

        problem = refusal(model)
        if problem:
            raise OnnxCpError(problem, usage=True)
    shapes, notes = infer_shapes(model, config.input_shapes)
    sites = find_sites(model, shapes, config.decomposition)
    chosen = select(sites, config)
    notes.extend(rule_warnings(sites, chosen, config))
    measurement = _measurement(model, config, timer, notes)
    target = _accuracy(model, config)
    data = _data(model, config, target, notes)
    deadline = None if config.time_budget is None else started + config.time_budget
    return Rewrite(model, config, shapes, sites, chosen, notes, progress, fitter, measurement, data,
                   Calibration.start(data, config), accuracy=target, deadline=deadline)


def _accuracy(model: onnx.ModelProto, config: RewriteConfig):
    """With ``selection.max_drop``: the data read and split once, the metric, the original scored."""
    selection = config.selection
    if selection is None or selection.max_drop is None:
        return None
    from onnx_cp.accuracy import AccuracyTarget

    # scoring is computed, not timed: every core (--threads is the session the forms are timed in)
    return AccuracyTarget.build(model, config.data, selection, config.input_shapes, config.seed,
                                config.worker_count())


def _data(model: onnx.ModelProto, config: RewriteConfig, target, notes: list[str]) -> CalibrationData | None:
    """The calibration samples, read once: for data-aware fits and recovery (--calib), and for rank
    selection's proxy (random inputs without --calib); with an accuracy target and no --calib, the
    target data's choosing part (never its held-back part: the drop promised is measured there)."""
    selection = config.selection
    proxy = selection is not None and selection.mode != "max-error"
    count = selection.calib_count if proxy else 0
    if config.calib is None and target is not None:
        x = target.split.selection["x"]
        notes.append(f"{param('calib')} not given: the {len(x)} samples of {param('data')} that choose the ranks "
                     "calibrate the fits too (the held-back ones stay for the drop)")
        name = runtime_inputs(model.graph)[0].name
        return CalibrationData.of(x, f"{_shown(config.data)} (choosing part)", name, config.calib_samples, count)
    if config.calib is None and not proxy:
        return None
    return CalibrationData.read(model, config.calib, config.calib_samples, count, config.seed, config.input_shapes)


def _shown(data) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else "the data given"


def _measurement(model: onnx.ModelProto, config: RewriteConfig, timer, notes: list[str]) -> Measurement | None:
    """How layers and the model are timed, or None when nothing needs or can have timing.

    Timing needs every input's shape. A dynamic first (batch) axis is taken as 1; any other
    dynamic axis must be given, since the speed-up depends on it: refused here, before any fit.
    """
    selection = config.selection
    selection_times = selection is not None and (
        selection.cost == "latency" or (selection.target_speedup is not None and selection.measure))
    needed = config.realize == "auto" or selection_times or config.quantize is not None
    dynamic = dynamic_dims(model, config.input_shapes)
    spatial = {name: [(a, n) for a, n in axes if a > 0] for name, axes in dynamic.items()}
    spatial = {name: axes for name, axes in spatial.items() if axes}
    if spatial:
        if not needed:
            return None  # a forced form with unknown sizes: rewrite, but nothing to time
        name, axes = next(iter(spatial.items()))
        example = "x".join(str(d) if d else "224" for d in _static_dims(model, name, None))
        raise OnnxCpError(
            f"input '{name}' has dynamic dims {[n for _, n in axes]}, and the forms are chosen by timing the "
            f"model at the size it runs at: give it with {shape_param(name, example)} (your size), "
            f"or force a form with {param('realize', repr('cp4'), cli='cp4')}", usage=True)
    if not needed and not config.measure:
        return None
    if timer is not None:
        return Measurement.injected(timer)
    shapes = dict(config.input_shapes)
    for name in dynamic:  # only batch axes are left: time at batch 1
        shapes[name] = tuple(_static_dims(model, name, 1))
    try:
        return Measurement.onnxruntime(model, config.threads, config.opt_level, shapes)
    except OnnxCpError as exc:
        if selection_times or config.quantize is not None:
            raise
        # Measuring is a courtesy for a forced form; auto falls back to the decomposition's first
        # form, and says so first.
        if config.realize == "auto":
            first = decompositions.get(config.decomposition).forms[0] if config.decomposition != "auto" else \
                "its decomposition's first form"
            notes.append(f"{marked(exc)}; every layer uses {first}, and the result is not measured")
        return None


def _static_dims(model: onnx.ModelProto, name: str, unknown: int | None) -> list[int | None]:
    """Input ``name``'s dims: a dynamic batch axis as 1, any other dynamic axis as ``unknown``."""
    inp = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if a == 0 else unknown)
            for a, d in enumerate(inp.type.tensor_type.shape.dim)]


def select(sites: list[Site], config: RewriteConfig) -> set[str]:
    """Keys of the eligible sites chosen by the layers / exclude patterns; patterns matching
    nothing are errors."""
    for option, patterns in (("layers", config.layers), ("exclude", config.exclude)):
        for pattern in patterns:
            if not _matching(sites, pattern):
                examples = ", ".join(s.name for s in sites[:5]) or "none"
                raise OnnxCpError(f"{spelled(f'{option} pattern {pattern!r}', f'--{option} {pattern!r}')} matches "
                                  f"no convolution (node or weight name); some names: {examples}; {LIST_LAYERS}",
                                  usage=True)
    chosen = {s.key for s in sites if s.eligible}
    if config.layers:
        chosen &= {s.key for p in config.layers for s in _matching(sites, p)}
    for pattern in config.exclude:
        chosen -= {s.key for s in _matching(sites, pattern)}
    return chosen


def rule_warnings(sites: list[Site], chosen: set[str], config: RewriteConfig) -> list[str]:
    """A note for every rank rule with a pattern that matches no selected layer, or whose every
    layer a later pattern rule takes."""
    notes = []
    patterned = [r for r in config.ranks if r.pattern is not None]
    selected = [s for s in sites if s.key in chosen]
    for i, rule in enumerate(patterned):
        matched = [s for s in selected if rule.matches(s.names)]
        if not matched:
            notes.append(f"{rank_param(f'{rule.pattern}={rule.value}')} matches no selected convolution; "
                         f"{LIST_LAYERS}")
            continue
        later = patterned[i + 1:]
        if all(any(r.matches(s.names) for r in later) for s in matched):
            notes.append(f"{rank_param(f'{rule.pattern}={rule.value}')} is shadowed: a later rule with a pattern "
                         "sets every layer it matches")
    return notes


def _matching(sites: list[Site], pattern: str) -> list[Site]:
    return [s for s in sites if any(fnmatch.fnmatchcase(n, pattern) for n in s.names)]

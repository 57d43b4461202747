"""Rewrite chosen Conv nodes of a model as CP decompositions (the Python API behind ``rewrite``).

The orchestrator: load, discover, select, rank, time the forms, fit, splice, verify, measure,
check, report. Each step is a service of its own module; the report is assembled at the end.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Callable

import onnx

from onnx_cp import provenance
from onnx_cp.calibrate.session import Calibration
from onnx_cp.config import RewriteConfig, rank_param
from onnx_cp import decomposed
from onnx_cp.decompose import Fitter
from onnx_cp.discover_linear import LinearSite, find_linears
from onnx_cp.discover import LIST_LAYERS, ConvSite, find_convs, site_report
from onnx_cp.errors import OnnxCpError, marked, param, shape_param, spelled
from onnx_cp.forms import (Candidate, FormChoice, SpeedCheck, Timing, check_speed, from_layer_timer, time_candidates,
                           onnxruntime_timing, slower_layers)
from onnx_cp.model_io import checkable_copy, load_model
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import Progress, staged
from onnx_cp.ranks.fitting import LayerFit
from onnx_cp.ranks.rules import RankDecision
from onnx_cp.report import LayerReport, RewriteReport
from onnx_cp.shapes import dynamic_dims, infer_shapes
from onnx_cp.splice import Replacement, splice

# A layer timer (models -> per model {Conv output name: ms}) or a whole Timing; tests inject one.
Timer = Callable[[list[onnx.ModelProto]], list[dict[str, float]]] | Timing


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    report: RewriteReport


def rewrite(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig) -> onnx.ModelProto:
    """Return a copy of ``model`` with the Convs chosen by ``config`` rewritten in CP form."""
    return rewrite_with_report(model, config).model


@dataclass
class _Layer:
    """What was decided for one selected layer, gathered as the rewrite goes."""

    site: ConvSite
    decision: RankDecision
    form: FormChoice | None = None
    fit: LayerFit | None = None
    kept_because: str | None = None  # set when a timing gave the Conv back
    extra_timings: dict[str, float] = field(default_factory=dict)
    proxy: float | None = None
    cost: float | None = None
    recovery: object | None = None  # calibrate.LayerRecovery, with --calib
    candidates: list = field(default_factory=list)  # forms.Candidate: what may replace the layer


def rewrite_with_report(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig, *,
                        progress: Progress | None = None, fitter: Fitter | None = None,
                        timer: Timer | None = None) -> RewriteResult:
    """Like ``rewrite``, and also say what happened to every convolution.

    ``fitter`` replaces the CP solver and ``timer`` the onnxruntime profiler that ``auto``
    realization uses (tests inject them to check one part alone).
    """
    model = load_model(model)
    shapes, notes = infer_shapes(model, config.input_shapes)
    sites = find_convs(model, shapes, config.decomposition)
    if config.decomposition in ("svd", "auto"):
        sites += find_linears(model, shapes)
    chosen = select(sites, config)
    notes.extend(rule_warnings(sites, chosen, config))
    timing = _timing(model, config, timer, notes)

    # Rank selection fits data-aware too, so calibration comes first there (every chosen layer);
    # otherwise only the layers that win their timing are observed.
    calib = Calibration.start(model, config, [s for s in sites if s.key in chosen and not isinstance(s, LinearSite)],
                              staged(progress, "calibration:"), notes) if config.selection is not None else None
    layers, rank_selection, fits = _rank(model, sites, chosen, shapes, config, fitter, progress, notes, calib)
    ranked = [l for l in layers if l.decision.rank is not None]
    capped = [l for l in layers if l.decision.capped]
    if capped:
        notes.append(_capped_note(capped))

    _candidates(model, ranked, timing, config, progress)
    winners = [l for l in ranked if l.candidates]

    if config.selection is None:
        calib = Calibration.start(model, config, [l.site for l in winners if not isinstance(l.site, LinearSite)],
                                  staged(progress, "calibration:"), notes)
    tasks = {}
    for l in winners:
        for c in l.candidates:
            key = decomposed.fit_key(l.site, c, calib is not None)
            if key not in fits and key not in tasks:
                tasks[key] = _task(key, l, c, config, calib)
    fits.update(fit_all(list(tasks.values()), config.fit_options(), config.worker_count(),
                        staged(progress, "fitting"), fitter))
    for l in winners:
        fitted = [(c, fits[decomposed.fit_key(l.site, c, calib is not None)]) for c in l.candidates]
        best, l.fit = decomposed.pick(l.site, fitted, l.form.timings_ms, _stats(l.site, calib))
        l.form.kind, l.decision = best.form, decomposed.with_rank(l.decision, best.rank)

    final, new_names = _splice(model, winners)
    if config.realize == "auto" and timing is not None and winners:
        if progress:
            progress("timing the chosen forms together", 0, 1)
        slower = slower_layers(model, final, [l.site for l in winners], timing)
        for l in winners:
            if l.site.key in slower:
                among, beside = slower[l.site.key]
                l.extra_timings = {f"{l.form.kind} among the chosen forms": among, "original beside them": beside}
                l.kept_because = "slower than its Conv among the chosen forms"
        winners = [l for l in winners if l.kept_because is None]
        if slower:
            final, new_names = _splice(model, winners)
    if calib and winners:
        if all(isinstance(l.fit, LayerFit) for l in winners):
            final = _recover(model, final, winners, calib, config, progress)
        else:
            notes.append(f"{param('calib')}: layer-wise recovery retrains CP chains only, and this rewrite has other "
                         "decompositions too; every layer keeps its data-aware fit, unrecovered")
    speed = _measured_by_selection(rank_selection, config)
    if speed is None and timing is not None and config.measure and winners:
        if progress:
            progress("measuring the rewritten model against the input", 0, 1)
        speed = check_speed(model, final, timing)
        if speed.speedup < 1.0 and config.realize == "auto":
            notes.append(f"the rewritten model measured {speed.speedup:.2f}x the input's speed "
                         f"({speed.original_ms:.3f} -> {speed.rewritten_ms:.3f} ms); every layer keeps its Conv")
            for l in winners:
                l.kept_because = "the whole rewritten model was slower than the input"
            winners = []
            (final, new_names), speed = _splice(model, []), SpeedCheck(speed.original_ms, speed.original_ms)
    if speed and winners and config.selection is not None and config.selection.target_speedup:
        notes.extend(_shortfall(speed.speedup, config.selection.target_speedup, rank_selection))
    if progress:
        progress("done", 1, 1)

    report = RewriteReport([_layer_report(site, chosen, layers, new_names, config) for site in sites],
                           config.method, notes)
    report.speed = speed.to_dict() if speed else None
    report.calibration = calib.summary() if calib else None
    if rank_selection is not None:
        if speed and config.selection.target_speedup is not None:
            rank_selection["measured"] = {"measured_speedup": speed.speedup, "original_ms": speed.original_ms,
                                          "rewritten_ms": speed.rewritten_ms}
        report.rank_selection = rank_selection
    provenance.record(final, provenance.entry(report.method, report.rewritten))
    try:
        # Weights stubbed out: checking the model itself would serialize it (and fail past 2 GiB).
        onnx.checker.check_model(checkable_copy(final))
    except onnx.checker.ValidationError as exc:  # a bug in the rewriter, never the user's fault
        raise RuntimeError(f"rewritten model fails the ONNX checker: {exc}") from exc
    return RewriteResult(final, report)


def _timing(model: onnx.ModelProto, config: RewriteConfig, timer: Timer | None, notes: list[str]) -> Timing | None:
    """How layers and the model are timed, or None when nothing needs or can have timing.

    Timing needs every input's shape. A dynamic first (batch) axis is taken as 1; any other
    dynamic axis must be given, since the speed-up depends on it: refused here, before any fit.
    """
    selection = config.selection
    needed = config.realize == "auto" or (selection is not None and (
        selection.cost == "latency" or (selection.target_speedup is not None and selection.measure)))
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
    if isinstance(timer, Timing):
        return timer
    if timer is not None:
        return from_layer_timer(timer)
    shapes = dict(config.input_shapes)
    for name in dynamic:  # only batch axes are left: time at batch 1
        shapes[name] = tuple(_static_dims(model, name, 1))
    try:
        return onnxruntime_timing(model, config.threads, config.opt_level, shapes)
    except OnnxCpError as exc:
        if selection is not None and selection.cost == "latency":
            raise
        # Measuring is a courtesy for a forced form; auto falls back to cp4, and says so first.
        if config.realize == "auto":
            notes.append(f"{marked(exc)}; every layer uses cp4, and the result is not measured")
        return None


def _static_dims(model: onnx.ModelProto, name: str, unknown: int | None) -> list[int | None]:
    """Input ``name``'s dims: a dynamic batch axis as 1, any other dynamic axis as ``unknown``."""
    inp = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if a == 0 else unknown)
            for a, d in enumerate(inp.type.tensor_type.shape.dim)]


def _rank(model, sites, chosen, shapes, config, fitter, progress, notes, calib: Calibration | None):
    """Every selected layer's rank decision, the rank selection summary (or None), and any fits
    the selection already made (data-aware with ``calib``), keyed as ``decomposed.fit_key``."""
    fits: dict = {}
    if config.selection is None:
        layers = [_Layer(s, decomposed.decide(s, config)) for s in sites if s.key in chosen]
        return layers, None, fits
    from onnx_cp.ranks.plan import plan_ranks

    plan = plan_ranks(model, sites, chosen, shapes, config, fitter, staged(progress, "choosing ranks"),
                      calib.weights if calib else None)
    notes.extend(plan.notes)
    layers = []
    for s in sites:
        if s.key not in chosen:
            continue
        c = plan.choices[s.key]
        chosen_by = c.decomposition if config.decomposition == "auto" else None
        layers.append(_Layer(s, RankDecision(c.rank, c.requested, c.capped, c.reason, decomposition=chosen_by),
                             proxy=c.proxy, cost=c.cost))
        if c.fit is not None:
            form = decomposed.first_form(c.decomposition or "cp")
            fits[decomposed.fit_key(s, Candidate(form, c.rank), calib is not None)] = c.fit
    return layers, plan.summary.to_dict(), fits


def _candidates(model, ranked: list[_Layer], timing: Timing | None, config: RewriteConfig, progress) -> None:
    """Each layer's candidate forms and its FormChoice: with timing (realize auto), the candidates
    faster than the Conv alone, and ``original`` when there are none (never fitted)."""
    offered = {l.site.key: decomposed.candidates(l.site, l.decision.rank, config, l.decision.decomposition)
               for l in ranked}
    timed = {}
    if config.realize == "auto" and ranked and timing is not None:
        if progress:
            progress("timing the forms in onnxruntime", 0, len(ranked))
        timed = time_candidates(model, [(l.site, offered[l.site.key]) for l in ranked], timing)
    for l in ranked:
        timings = timed.get(l.site.key, {})
        l.candidates = offered[l.site.key]
        if "original" in timings and len(timings) > 1:
            l.candidates = [c for c in l.candidates if c.form in timings and timings[c.form] < timings["original"]]
        elif config.decomposition != "auto":
            l.candidates = l.candidates[:1]  # untimed: the decomposition's first form, as forced
        l.form = FormChoice(min(timings, key=timings.get) if l.candidates and timings else
                            l.candidates[0].form if l.candidates else "original", timings)


def _task(key, l: _Layer, c, config: RewriteConfig, calib: Calibration | None) -> FitTask:
    name = decomposed.decomposition_of(l.site, config) if config.decomposition != "auto" else \
        decomposed.owner(c.form)
    if name == "cp":
        return FitTask(key, l.site.name, l.site.groups(), c.rank, config.seed, calib.weights(l.site) if calib else None)
    return FitTask(key, f"{l.site.name} ({c.form})", l.site.groups(), c.rank, config.seed, decomposition=name,
                   stats=_stats(l.site, calib))


def _stats(site: ConvSite, calib: Calibration | None):
    """Per group, the input-channel covariance calibration observed (None without --calib)."""
    if calib is None or isinstance(site, LinearSite) or site.key not in calib.observed:
        return None
    return [m.channels for m in calib.observed[site.key].moments]


def _recover(model, fitted, winners: list[_Layer], calib: Calibration, config: RewriteConfig, progress):
    """The rewritten model with every layer recovered (when ``config.recover``), each layer's
    fit carrying its recovered factors."""
    reps = [Replacement(l.site, l.form.kind, l.decision.rank, decomposed.group_factors(l.fit)) for l in winners]
    final, recovered = calib.recover(model, fitted, reps, staged(progress, "calibration:"))
    for l in winners:
        l.recovery = recovered.get(l.site.key)
        if l.recovery is not None and l.recovery.result is not None:
            l.fit = calib.refit(l.fit, l.site, l.recovery)
    return final


def _measured_by_selection(summary: dict | None, config: RewriteConfig) -> SpeedCheck | None:
    """The kept measurement round of --target-speedup, when it timed exactly the final model
    (a forced form: nothing changed after the selection)."""
    measured = (summary or {}).get("measured")
    if not measured or config.realize == "auto":
        return None
    return SpeedCheck(measured["original_ms"], measured["rewritten_ms"])


def _shortfall(measured: float, target: float, summary: dict | None) -> list[str]:
    """A note when the written model's measured speed-up is more than 10% off the target."""
    if abs(measured / target - 1) <= 0.1:
        return []
    rounds = len((summary or {}).get("rounds") or [])
    return [f"the rewritten model measured {measured:.2f}x against {param('selection.target_speedup', f'{target:g}')}, "
            f"{'short of' if measured < target else 'past'} it by {abs(measured / target - 1):.0%}, where the layers' costs "
            f"predicted it ({rounds} measured round(s) of the whole model could not close the gap; the report's "
            f"rank_selection lists them)"]


def _splice(model: onnx.ModelProto, layers: list[_Layer]) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """A copy of ``model`` with ``layers`` in their forms, and the new node names per site."""
    return splice(model, [Replacement(l.site, l.form.kind, l.decision.rank, decomposed.group_factors(l.fit))
                          for l in layers])



def _capped_note(capped: list[_Layer]) -> str:
    names = ", ".join(l.site.name + ("" if l.decision.cap is None else f" (cap {l.decision.cap})") for l in capped[:4])
    more = f" and {len(capped) - 4} more" if len(capped) > 4 else ""
    rank = capped[0].decision.requested
    return (f"rank {rank} is above the cap of {len(capped)} layer(s), {names}{more}: above its cap the "
            "decomposed form costs more multiply-adds than the Conv, so these keep their Conv and were not fitted; "
            "ask for a lower rank or a fraction such as 0.25")


def _layer_report(site: ConvSite, chosen: set[str], layers: list[_Layer], new_names, config: RewriteConfig
                  ) -> LayerReport:
    """The report row of one convolution, from what was decided for it."""
    row = site_report(site)
    if not site.eligible:
        row.status, row.reason = "ineligible", site.reason
        return row
    if site.key not in chosen:
        row.status, row.reason = "skipped", "not selected by the layers / exclude patterns"
        return row
    l = next(l for l in layers if l.site.key == site.key)
    d = l.decision
    row.rank_requested, row.rank_capped, row.proxy_error, row.cost = d.requested, d.capped, l.proxy, l.cost
    if d.rank is None:
        row.status, row.reason = ("kept" if d.capped else "skipped"), d.reason
        return row
    form = l.form.kind if l.form is not None and l.form.kind != "original" else None
    row.decomposition = decomposed.owner(form) if form else decomposed.decomposition_of(site, config)
    row.rank = decomposed.rank_label(d.rank, row.decomposition)
    if l.form is not None and l.form.timings_ms:
        row.timings_ms = {**l.form.timings_ms, **l.extra_timings}
    if isinstance(l.fit, LayerFit):
        fits = l.fit.fits
        row.rel_error = l.fit.rel_error
        row.degeneracy = max(f.degeneracy for f in fits)
        row.max_term_norm = max(f.max_term_norm for f in fits)
        row.stabilized = any(f.stabilized for f in fits)
        row.fit_seconds = sum(f.seconds for f in fits)
    elif l.fit is not None:  # another decomposition: its kernel error, like CP's
        row.rel_error, row.fit_seconds = decomposed.error(site, form, l.fit), l.fit.seconds
    if l.recovery is not None:
        row.output_error_before, row.output_error_after, row.recovery = l.recovery.report()
    if l.form is not None and l.form.kind == "original":
        row.status, row.realization = "kept", "original"
        row.reason = f"no {_forms_label(row.decomposition)} at rank {row.rank} was faster in onnxruntime (" + ", ".join(
            f"{k} {v:.3f} ms" for k, v in l.form.timings_ms.items()) + "); not fitted"
        return row
    if l.kept_because is not None:
        row.status, row.realization = "kept", "original"
        timed = ", ".join(f"{k} {v:.3f} ms" for k, v in (row.timings_ms or {}).items())
        row.reason = f"no {_forms_label(row.decomposition)} was faster in onnxruntime: {l.kept_because}" + (f" ({timed})" if timed else "")
        return row
    after = decomposed.cost_after(site, l.form.kind, d.rank)
    row.status, row.realization = "rewritten", l.form.kind
    row.macs_after, row.params_after = after.macs, after.params
    row.new_nodes = new_names.get(site.key, [])
    return row


def _forms_label(decomposition: str) -> str:
    return {"cp": "CP form", "auto": "candidate form"}.get(decomposition, f"{decomposition} form")


def select(sites: list[ConvSite], config: RewriteConfig) -> set[str]:
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


def rule_warnings(sites: list[ConvSite], chosen: set[str], config: RewriteConfig) -> list[str]:
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


def _matching(sites: list[ConvSite], pattern: str) -> list[ConvSite]:
    return [s for s in sites if any(fnmatch.fnmatchcase(n, pattern) for n in s.names)]

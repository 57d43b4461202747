"""Rewrite chosen Conv nodes of a model as CP decompositions (the Python API behind ``rewrite``)."""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from onnx_cp.config import RewriteConfig
from onnx_cp.conv import cp_cost
from onnx_cp.decompose import Fitter, KernelFit, fit_kernel
from onnx_cp.discover import ConvSite, find_convs, site_report
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import GraphIndex, NameAllocator, all_names, subgraph_reads
from onnx_cp.model_io import checkable_copy, load_model
from onnx_cp.layer_timing import Timer, profile_timer
from onnx_cp.realize import REALIZATIONS, realize
from onnx_cp.report import LayerReport, RewriteReport
from onnx_cp.shapes import infer_shapes

METADATA_KEY = "onnx_cp"

# Called as progress(layer_name, done, total) before each fit and once at the end.
Progress = Callable[[str, int, int], None]


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    report: RewriteReport


def rewrite(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig) -> onnx.ModelProto:
    """Return a copy of ``model`` with the Convs chosen by ``config`` rewritten in CP form."""
    return rewrite_with_report(model, config).model


def rewrite_with_report(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig, *,
                        progress: Progress | None = None, fitter: Fitter | None = None,
                        timer: Timer | None = None) -> RewriteResult:
    """Like ``rewrite``, and also say what happened to every convolution.

    ``fitter`` replaces the CP solver and ``timer`` the onnxruntime profiler that ``auto``
    realization uses (tests inject them to check one part alone).
    """
    model = load_model(model)
    shapes, notes = infer_shapes(model, config.input_shapes)
    sites = find_convs(model, shapes)
    chosen = select(sites, config)
    options = config.fit_options()
    if fitter is None:
        fitter = lambda kernel, rank, seed: fit_kernel(kernel, rank, seed, options)  # noqa: E731
        warm_fitter = lambda kernel, rank, seed, init: fit_kernel(kernel, rank, seed, options, init=init)  # noqa: E731
    else:  # an injected fitter has no warm starts
        warm_fitter = lambda kernel, rank, seed, init: fitter(kernel, rank, seed)  # noqa: E731

    layers: list[LayerReport] = []
    planned: list[_Planned] = []
    cache: dict[tuple[str, int], list[KernelFit]] = {}
    ranked = None
    if config.selection is not None:  # ranks chosen by an error bound or a budget (onnx_cp.ranks)
        from onnx_cp.ranks.plan import plan_ranks

        ranked = plan_ranks(model, sites, chosen, shapes, config, warm_fitter, progress)
        cache.update(ranked.fits(sites))
        notes.extend(ranked.notes)
    for k, site in enumerate(sites):
        layer = site_report(site)
        layers.append(layer)
        if not site.eligible:
            layer.status, layer.reason = "ineligible", site.reason
            continue
        if id(site) not in chosen:
            layer.status, layer.reason = "skipped", "not selected by --layers/--exclude"
            continue
        rank, capped, requested, why = ranked.rank(site) if ranked else choose_rank(site, config)
        if ranked:
            layer.proxy_error, layer.cost = ranked.choices[id(site)].proxy, ranked.choices[id(site)].cost
        if rank is None:
            layer.status, layer.reason = "skipped", why
            continue
        if progress:
            progress(site.name, k, len(sites))
        key = (site.weight.source, rank)
        if key not in cache:
            cache[key] = _fit_groups(site, rank, config.seed, fitter)
        fits = cache[key]
        _record_fit(layer, site, rank, capped, requested, fits)
        planned.append(_Planned(site, layer, rank, [f.factors for f in fits], config.realize))
    if progress:
        progress("", len(sites), len(sites))

    if config.realize == "auto" and planned:
        notes.extend(_choose_forms(model, planned, config, timer))
    # load_model gave us a private copy: unless rank selection still needs the original
    # (to measure the speed-up), the final model is built in it, so a model is held once.
    final = _build(model, planned, in_place=ranked is None)
    for plan in planned:
        plan.layer.realization = plan.kind
        if plan.kind == "original":
            plan.layer.status = "kept"
            plan.layer.reason = "no CP form was faster in onnxruntime (" + ", ".join(
                f"{k} {v:.3f} ms" for k, v in plan.layer.timings_ms.items()) + ")"
            continue
        site = plan.site
        after = cp_cost(plan.kind, site.spec, plan.rank, site.in_shape, site.out_shape, site.bias is not None)
        plan.layer.status = "rewritten"
        plan.layer.macs_after, plan.layer.params_after = after.macs, after.params
    report = RewriteReport(layers, config.method, notes)
    if ranked:
        from onnx_cp.ranks.plan import finish

        report.rank_selection = finish(ranked, model, final, config)
    _record_metadata(final, report)
    try:
        # Weights stubbed out: checking the model itself would serialize it (and fail past 2 GiB).
        onnx.checker.check_model(checkable_copy(final))
    except onnx.checker.ValidationError as exc:  # a bug in the rewriter, never the user's fault
        raise RuntimeError(f"rewritten model fails the ONNX checker: {exc}") from exc
    return RewriteResult(final, report)


@dataclass
class _Planned:
    """A fitted layer waiting for its form: cp4, cp3, or original (auto kept the Conv)."""

    site: ConvSite
    layer: LayerReport
    rank: int
    factors: list[tuple[np.ndarray, ...]]
    kind: str


def _record_fit(layer: LayerReport, site: ConvSite, rank: int, capped: bool, requested,
                fits: list[KernelFit]) -> None:
    norm2 = [float(np.sum(np.square(g.astype(np.float64)))) for g in groups_of(site)]
    total = sum(norm2)
    layer.rank, layer.rank_capped, layer.rank_requested = rank, capped, requested
    layer.rel_error = math.sqrt(sum(f.rel_error**2 * n for f, n in zip(fits, norm2)) / total) if total else 0.0
    layer.degeneracy = max(f.degeneracy for f in fits)
    layer.max_term_norm = max(f.max_term_norm for f in fits)
    layer.stabilized = any(f.stabilized for f in fits)
    layer.fit_seconds = sum(f.seconds for f in fits)


def _build(model: onnx.ModelProto, planned: list[_Planned], in_place: bool = False) -> onnx.ModelProto:
    """``model`` (a copy of it unless ``in_place``) with each planned layer realized in its form."""
    if in_place:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    names = NameAllocator(all_names(model))
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    replacements: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    replaced = []
    for plan in planned:
        plan.layer.new_nodes = []
        if plan.kind == "original":
            continue
        site = plan.site
        part = realize(plan.kind, site.name, site.node.input[0], site.node.output[0], site.bias,
                       site.spec, plan.factors, site.weight.value.dtype, names)
        replacements[position[id(site.node)]] = part.nodes
        new_inits.extend(part.initializers)
        replaced.append(site)
        plan.layer.new_nodes = [n.name for n in part.nodes]
    _apply(out, replacements, new_inits, replaced)
    return out


def _choose_forms(model: onnx.ModelProto, planned: list[_Planned], config: RewriteConfig,
                  timer: Timer | None) -> list[str]:
    """Profile the model as it is, all-cp4 and all-cp3, and give each layer its fastest form.

    Layers are timed in place, so onnxruntime's fusions and layout changes around them count.
    """
    candidates = ("original", *REALIZATIONS)
    variants = []
    for kind in candidates:
        for plan in planned:
            plan.kind = kind
        variants.append(_build(model, planned) if kind != "original" else model)
    timer = timer or profile_timer(config.timing_options(), config.input_shapes)
    try:
        per_model = timer(variants)
    except OnnxCpError as exc:
        for plan in planned:
            plan.kind = "cp4"
        return [f"auto could not time the model ({exc}); every layer uses cp4"]
    for plan in planned:
        output = plan.site.node.output[0]
        timings = {kind: times[output] for kind, times in zip(candidates, per_model) if output in times}
        plan.layer.timings_ms = timings
        plan.kind = min(timings, key=timings.get) if "original" in timings and len(timings) > 1 else "cp4"
    return _verify_forms(model, planned, timer)


def _verify_forms(model: onnx.ModelProto, planned: list[_Planned], timer: Timer) -> list[str]:
    """Time the chosen mix of forms once more and give layers that came out slower their Conv back.

    A layer's time depends on its neighbours' forms: where a chain leaves onnxruntime's blocked
    (NCHWc) layout, the layout conversion lands on the layer next to it, so the all-cp4 and
    all-cp3 profiles can favour a form that is slower among the forms actually chosen (seen on
    VGG-19's 3->64 first conv at 2 threads).
    """
    rewritten = [plan for plan in planned if plan.kind != "original"]
    if not rewritten:
        return []
    try:
        before, after = timer([model, _build(model, planned)])
    except OnnxCpError as exc:
        return [f"auto could not time the chosen forms together ({exc}); they are kept unverified"]
    for plan in rewritten:
        output = plan.site.node.output[0]
        if output in before and output in after and after[output] > before[output]:
            plan.layer.timings_ms[f"{plan.kind} among the chosen forms"] = after[output]
            plan.layer.timings_ms["original beside them"] = before[output]
            plan.kind = "original"
    return []


def select(sites: list[ConvSite], config: RewriteConfig) -> set[int]:
    """ids of the eligible sites chosen by --layers/--exclude; patterns matching nothing are errors."""
    def matching(pattern: str) -> list[ConvSite]:
        return [s for s in sites if any(fnmatch.fnmatchcase(n, pattern) for n in s.names)]

    for option, patterns in (("--layers", config.layers), ("--exclude", config.exclude)):
        for pattern in patterns:
            if not matching(pattern):
                examples = ", ".join(s.name for s in sites[:5]) or "none"
                raise OnnxCpError(f"{option} {pattern!r} matches no convolution (node or weight name); "
                                  f"some names: {examples}; run 'onnx-cp inspect' to list them", usage=True)
    for rule in config.ranks:
        if rule.pattern is not None and not matching(rule.pattern):
            raise OnnxCpError(f"--rank pattern {rule.pattern!r} matches no convolution; "
                              "run 'onnx-cp inspect' to list them", usage=True)
    chosen = {id(s) for s in sites if s.eligible}
    if config.layers:
        chosen &= {id(s) for p in config.layers for s in matching(p)}
    for pattern in config.exclude:
        chosen -= {id(s) for s in matching(pattern)}
    return chosen


def choose_rank(site: ConvSite, config: RewriteConfig) -> tuple[int | None, bool, int | float | None, str]:
    """(rank, capped, requested, reason-if-none) for one eligible site."""
    rule = config.rank_rule(site.names)
    if rule is None:
        return None, False, None, "no --rank rule matches this layer"
    before, per_rank = rank_unit_cost(site, config.realize)
    cap = before // per_rank if config.cap_rank else None
    align = config.align_rank
    if isinstance(rule.value, float):
        rank = align(max(1, int(rule.value * before // per_rank)))
    else:
        rank = rule.value
    if cap is not None and cap < 1:
        return None, False, rule.value, "no CP rank is cheaper than this Conv"
    if cap is not None and rank > cap:
        return align(cap), True, rule.value, ""
    return rank, False, rule.value, ""


def rank_unit_cost(site: ConvSite, realize: str) -> tuple[int, int]:
    """(the Conv's multiply-adds, those of its CP form per unit of rank); before // per_rank is the cap."""
    spec = site.spec
    in_shape = site.in_shape or (1, spec.in_channels, 1, 1)
    out_shape = site.out_shape or (1, spec.out_channels, 1, 1)
    before = site.cost.macs if site.cost.macs is not None else \
        spec.out_channels * spec.in_per_group * spec.kernel[0] * spec.kernel[1]
    kind = "cp4" if realize == "auto" else realize  # auto: the cheaper form
    return before, cp_cost(kind, spec, 1, in_shape, out_shape, False).macs or 1


def build_ranked(model: onnx.ModelProto, layers, kind: str = "cp4") -> onnx.ModelProto:
    """``model`` with each ``(site, rank, per-group factors)`` of ``layers`` in ``kind`` form."""
    return _build(model, [_Planned(site, site_report(site), rank, factors, kind)
                          for site, rank, factors in layers])


def groups_of(site: ConvSite) -> list[np.ndarray]:
    w = site.weight.value
    per = site.spec.out_per_group
    return [w[g * per:(g + 1) * per] for g in range(site.spec.group)]


def _fit_groups(site: ConvSite, rank: int, seed: int, fitter: Fitter) -> list[KernelFit]:
    return [fitter(np.asarray(g, dtype=np.float64), rank, seed + i) for i, g in enumerate(groups_of(site))]


def _apply(model: onnx.ModelProto, replacements: dict[int, list[onnx.NodeProto]],
           new_inits: list[onnx.TensorProto], replaced: list[ConvSite]) -> None:
    """Splice the new nodes in place (keeps topological order), then drop weights nobody reads."""
    graph = model.graph
    if not replacements:
        return
    nodes = []
    for i, node in enumerate(graph.node):
        nodes.extend(replacements.get(i, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    if model.ir_version < 4:  # IR < 4: every initializer must also be a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in new_inits)
    candidates = []
    for site in replaced:
        candidates.extend([site.weight.source, *site.weight.via])
    _remove_dead(graph, candidates)


def _remove_dead(graph: onnx.GraphProto, candidates: list[str]) -> None:
    """Remove the given tensors' producers and initializers once nothing reads them any more."""
    for _ in range(len(candidates) + 1):
        index = GraphIndex(graph)
        used = set(index.consumers) | index.graph_outputs | subgraph_reads(graph)
        dead = [name for name in candidates if name not in used]
        if not dead:
            return
        dead_set = set(dead)
        keep = [n for n in graph.node if not (set(n.output) & dead_set and not set(n.output) - dead_set - {""})]
        removed_inputs = [i for n in graph.node if n not in keep for i in n.input]
        del graph.node[:]
        graph.node.extend(keep)
        # Delete in place: clearing and re-adding the survivors would copy every weight.
        for field_name in ("initializer", "input", "value_info"):
            container = getattr(graph, field_name)
            for i in reversed(range(len(container))):
                if container[i].name in dead_set:
                    del container[i]
        candidates = [c for c in candidates if c not in dead_set] + removed_inputs


def _record_metadata(model: onnx.ModelProto, report: RewriteReport) -> None:
    if not report.rewritten:
        return
    entry = report.metadata()
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:  # an earlier rewrite: keep its layers too
            try:
                entry["layers"] = json.loads(prop.value).get("layers", []) + entry["layers"]
            except (ValueError, AttributeError):
                pass
            prop.value = json.dumps(entry)
            return
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(entry))

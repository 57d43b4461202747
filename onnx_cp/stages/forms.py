"""The forms stage: which forms may replace each layer, chosen by time measured in onnxruntime
before any fit.

Time does not depend on the weights' values, so the forms are timed on the model with
placeholder factors at the layers' ranks (measure.Measurement.variant): a layer that no form
makes faster is never fitted. A layer's candidates are the forms of its decomposition, or with
``--decomposition auto`` and a rank rule, every decomposition of ``decompositions.AUTO`` that
applies (and lrcp with a factor rank) at its largest rank within the CP form's cost at the
rule's rank. Layers are timed in place, so onnxruntime's fusions and layout changes around them count.
"""
from __future__ import annotations

from typing import Sequence

from onnx_cp import decompositions
from onnx_cp.conv import Cost
from onnx_cp.decision import Decision
from onnx_cp.errors import OnnxCpError
from onnx_cp.sites import Site
from onnx_cp.stages.context import Candidate, Rewrite


# A form must time this much faster than the layer's Conv to replace it: a layer timed a percent
# faster is within the timing's noise, and its fit would cost time and accuracy for nothing
# (nudenet at --rank 200: 3 of 16 rewritten layers timed 1.01x-1.02x, 35 s of fits).
FORM_MARGIN = 0.05


def choose_forms(rw: Rewrite) -> None:
    """Each ranked layer's candidates (those at least ``FORM_MARGIN`` faster than its Conv when
    timed) and its fastest form; ``original`` where none is (never fitted)."""
    config = rw.config
    ranked = [r for r in rw.records if r.decision.rank is not None]
    offered = {r.site.key: candidates(r.site, r.decision, config) for r in ranked}
    timed = {}
    if config.realize == "auto" and ranked and rw.measurement is not None:
        if rw.progress:
            rw.progress("forms: timing the candidates in onnxruntime", 0, len(ranked))
        timed = time_candidates(rw, [(r.site, offered[r.site.key]) for r in ranked])
    for r in ranked:
        timings = timed.get(r.site.key, {})
        r.candidates = offered[r.site.key]
        if "original" in timings and len(timings) > 1:
            faster = (1 - FORM_MARGIN) * timings["original"]
            r.candidates = [c for c in r.candidates if c.form in timings and timings[c.form] < faster]
        elif config.decomposition != "auto":
            r.candidates = r.candidates[:1]  # untimed: the decomposition's first form, as forced
        r.timings = timings
        r.form = (min(timings, key=timings.get) if r.candidates and timings else
                  r.candidates[0].form if r.candidates else "original")


def candidates(site: Site, decision: Decision, config) -> list[Candidate]:
    """Every way to rewrite the site at its decided rank."""
    rank = decision.rank
    if decision.decomposition is not None:  # rank selection chose it
        return [Candidate(f, rank) for f in decompositions.get(decision.decomposition).forms]
    name = site.decomposition(config.decomposition)
    if name != "auto":
        return [Candidate(f, rank) for f in decompositions.get(name).forms_for(config.realize)]
    rule = decompositions.get(decompositions.rule_decomposition(name))
    budget = rule.cost(rule.forms[0], site.spec, rank, site.in_shape, site.out_shape, False)
    budget = Cost(None if budget.macs is None else budget.macs + 1, budget.params + 1)  # at most, not below
    found = [Candidate(f, rank) for f in rule.forms] if rule.applies(site.spec) is None else []
    names = [n for n in decompositions.AUTO if n != rule.name] + (["lrcp"] if config.factor_rank else [])
    for other in names:
        d = decompositions.get(other)
        if d.applies(site.spec) is not None:
            continue
        try:
            r = d.rank_within(site.spec, site.in_shape, site.out_shape, budget, config.factor_rank, config.align_rank)
        except OnnxCpError:
            r = None
        if r is not None:
            found.extend(Candidate(f, r) for f in d.forms)
    return found


def time_candidates(rw: Rewrite, layers: Sequence[tuple[Site, Sequence[Candidate]]]) -> dict[str, dict[str, float]]:
    """Per site key, ``{"original": ms, form: ms, ...}``: the model as it is, then one variant per
    candidate position (every layer in its i-th candidate), all with placeholder factors."""
    count = max((len(c) for _, c in layers), default=0)
    variants = [[(site, c[i].form, c[i].rank) for site, c in layers if i < len(c)] for i in range(count)]
    finish = end_form(rw)
    per_model = [times for _, times in rw.measurement.profile_variants(rw.model, variants, finish)]
    timed = {}
    for site, offered in layers:
        out = site.node.output[0]
        names = ["original"] + [c.form for c in offered]
        timed[site.key] = {name: times[out] for name, times in zip(names, per_model) if out in times}
    return timed


def end_form(rw: Rewrite):
    """With quantize='int8', INT8 (calibrated on a few samples: only its time is read), so each
    layer takes the form fastest as it will be written: charcnn36's features.3 in cp3 ran 8.65
    ms float against cp4's 8.97, but its spatial stage is slower in int8, and the written model
    ran 3.95x where the rounds had timed cp4 at 4.96x. None where the rank selection's first round
    found INT8 slower on the rewrite (it will be written in float) or nothing is quantized."""
    if rw.config.quantize is None or rw.data is None:
        return None
    settled = getattr(rw.selection, "end_form", None)
    if settled and settled["timed"] == "float":
        return None
    from onnx_cp.quantize import int8_for_timing

    return int8_for_timing(rw.data.int8_inputs)

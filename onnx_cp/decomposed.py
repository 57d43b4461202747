"""What a layer becomes under ``--decomposition``: its rank, the candidate forms timed for it,
the fit each candidate needs, and (auto) the pick among the fitted ones. A service of rewrite.py.

cp keeps ranks/rules.py's ranks and CP's forms (cp4, cp3). Another decomposition gives each
layer the rank its rule says (decompositions/choose.py) and times its own forms against the
Conv. auto: the CP rank sets the layer's budget, the multiply-adds of its cp4 form; every
decomposition in ``decompositions.AUTO`` that applies (and lrcp with a factor rank) takes its
largest rank within that budget; the candidates are timed in onnxruntime with placeholder
factors, those not faster than the Conv are dropped, the rest fitted, and the lowest relative
error wins: the kernel error, or with --calib the output error on inputs of the layer's input
channel covariance (``calibration.output_error``), the same measure for every candidate.
Gemm and MatMul sites (LinearSite) only have svd.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from onnx_cp import decompositions
from onnx_cp.conv import Cost
from onnx_cp.decompositions.calibration import output_error
from onnx_cp.decompositions.choose import choose_rank as choose_decomposed, describe
from onnx_cp.discover import ConvSite
from onnx_cp.errors import OnnxCpError
from onnx_cp.discover_linear import LinearSite
from onnx_cp.forms import Candidate
from onnx_cp.ranks.fitting import LayerFit
from onnx_cp.ranks.rules import RankDecision, choose_rank
from onnx_cp.realize import REALIZATIONS


def decomposition_of(site: ConvSite, config) -> str:
    """The decomposition a site is rewritten with: svd for a Gemm or MatMul, else the config's."""
    return "svd" if isinstance(site, LinearSite) else config.decomposition


def decide(site: ConvSite, config) -> RankDecision:
    """The rank ``config``'s rules give a site (auto: the CP rank, which sets its budget)."""
    name = decomposition_of(site, config)
    if name in ("cp", "auto"):
        return choose_rank(site, config)
    rule = config.rank_rule(site.names)
    if rule is None:
        return RankDecision(None, reason="no rank rule matches this layer")
    choice = choose_decomposed(decompositions.get(name), rule.value, site.spec, site.in_shape, site.out_shape,
                               site.cost, site.groups() if name == "gkpd" else None, factor_rank=config.factor_rank,
                               cap_rank=config.cap_rank, align=config.align_rank)
    return RankDecision(choice.rank, rule.value, choice.capped, choice.reason)


def forms(site: ConvSite, config) -> tuple[str, ...]:
    """The forms timed against the Conv (realize auto), or the one forced by --realize."""
    name = decomposition_of(site, config)
    own = REALIZATIONS if name == "cp" else decompositions.get(name).forms
    if config.realize == "auto":
        return tuple(own)
    if name == "lrcp" and config.realize in REALIZATIONS:
        return ("l" + config.realize,)  # cp4 -> lrcp4
    return (config.realize,) if config.realize in own else (own[0],)


def candidates(site: ConvSite, rank, config, chosen: str | None = None) -> list[Candidate]:
    """Every way to rewrite the site at ``rank`` (auto: within the cp4 form's cost at the CP rank,
    or the forms of the decomposition ``chosen`` by rank selection at its rank)."""
    if chosen is not None:
        own = REALIZATIONS if chosen == "cp" else decompositions.get(chosen).forms
        return [Candidate(f, rank) for f in own]
    if config.decomposition != "auto" or isinstance(site, LinearSite):
        return [Candidate(f, rank) for f in forms(site, config)]
    found = [Candidate(f, rank) for f in REALIZATIONS]
    cp = decompositions.get("cp")
    budget = cp.cost("cp4", site.spec, rank, site.in_shape, site.out_shape, False)
    budget = Cost(None if budget.macs is None else budget.macs + 1, budget.params + 1)  # at most, not below
    names = [n for n in decompositions.AUTO if n != "cp"] + (["lrcp"] if config.factor_rank else [])
    for name in names:
        d = decompositions.get(name)
        if d.applies(site.spec) is not None:
            continue
        try:
            r = d.rank_within(site.spec, site.in_shape, site.out_shape, budget, config.factor_rank, config.align_rank)
        except OnnxCpError:
            r = None
        if r is not None:
            found.extend(Candidate(f, r) for f in d.forms)
    return found


def first_form(decomposition: str) -> str:
    """The form a decomposition's fits are keyed by (cp: cp4)."""
    return decompositions.get(decomposition).forms[0]


def owner(form: str) -> str:
    """The decomposition a form belongs to (cp4 -> cp, lrcp3 -> lrcp)."""
    return decompositions.for_form(form).name


def fit_key(site: ConvSite, candidate: Candidate, per_site: bool) -> tuple:
    """Layers sharing a weight share a fit, unless their inputs (and so their fits) differ.
    A cp key is (weight source, rank), as rank selection keys the fits it made."""
    name = owner(candidate.form)
    key = (site.weight.source, candidate.rank) if name == "cp" else (site.weight.source, name, candidate.rank)
    return key + ((site.key,) if per_site else ())


def group_factors(fit) -> list[tuple[np.ndarray, ...]]:
    """Per-group factors of a fit: a CP LayerFit or another decomposition's Factors."""
    return [f.factors for f in fit.fits] if isinstance(fit, LayerFit) else list(fit.groups)


def error(site: ConvSite, form: str, fit, stats: Sequence[np.ndarray] | None = None) -> float:
    """The fit's relative kernel error (output error under ``stats``), the same for any decomposition."""
    approx = decompositions.for_form(form).kernels(group_factors(fit))
    return output_error(site.groups(), approx, stats)


def pick(site: ConvSite, fitted: Sequence[tuple[Candidate, object]], timings: dict[str, float],
         stats: Sequence[np.ndarray] | None = None) -> tuple[Candidate, object]:
    """The fitted candidate of lowest error (the faster one on a tie). Forms of one decomposition
    share a fit (cp4 and cp3), so each fit's error is computed once."""
    errors: dict = {}

    def fit_error(cf) -> float:
        key = (owner(cf[0].form), id(cf[1]))
        if key not in errors:
            errors[key] = error(site, cf[0].form, cf[1], stats)
        return errors[key]

    return min(fitted, key=lambda cf: (round(fit_error(cf), 9), timings.get(cf[0].form, 0.0)))


def cost_after(site: ConvSite, form: str, rank) -> Cost:
    has_bias = site.has_bias if isinstance(site, LinearSite) else site.bias is not None
    return decompositions.for_form(form).cost(form, site.spec, rank, site.in_shape, site.out_shape, has_bias)


def with_rank(decision: RankDecision, rank) -> RankDecision:
    return dataclasses.replace(decision, rank=rank)


def rank_label(rank, decomposition: str):
    """A rank for the report: an int as it is, others as the CLI writes them (16x12, 24:8)."""
    return rank if isinstance(rank, int) or rank is None else describe(rank, decomposition)

"""Decompositions of a Conv weight, one module each, behind one interface (base.Decomposition):
fit the weight, realize the factors as ONNX nodes, count their cost, say whether they apply.

    from onnx_cp import decompositions
    tucker = decompositions.get("tucker2")
    factors = tucker.fit(site.groups(), "16x12")
    part = tucker.realize("tucker2", site.name, x, y, bias, site.spec, factors.groups, dtype, names)

A new decomposition is a new module registered here; the orchestrator needs no edit.
"""
from __future__ import annotations

from onnx_cp.decompositions.base import Decomposition, Factors
from onnx_cp.decompositions.cp import CP
from onnx_cp.decompositions.gkpd import GKPD
from onnx_cp.decompositions.lrcp import LowRankFactorCP
from onnx_cp.decompositions.nodes import Realization
from onnx_cp.decompositions.svd import SVD
from onnx_cp.decompositions.tucker2 import Tucker2
from onnx_cp.errors import OnnxCpError, param

_REGISTRY: dict[str, Decomposition] = {}
DEFAULT = "cp"  # what --decomposition means when not given: the paper's method


def _register(decomposition: Decomposition) -> Decomposition:
    """Add a decomposition under its name; a second one of the same name is a bug."""
    if decomposition.name in _REGISTRY:
        raise ValueError(f"a decomposition named {decomposition.name!r} is already registered")
    _REGISTRY[decomposition.name] = decomposition
    return decomposition


for _d in (CP(), Tucker2(), SVD(), GKPD(), LowRankFactorCP()):
    _register(_d)

NAMES = tuple(_REGISTRY)
FORMS = tuple(f for d in _REGISTRY.values() for f in d.forms)
# How a rank is written for each decomposition, for error messages (onnx_cp.errors.param: the
# CLI reads flags where the API reads parameters).
RANK_SYNTAX = {
    "cp": "an integer rank such as 64, or a fraction of the layer's cost such as 0.25",
    "tucker2": "R for both ranks (16), R1xR2 (16x12), or a fraction of the layer's cost (0.25)",
    "svd": "an integer rank such as 12, or a fraction of the layer's cost such as 0.25",
    "gkpd": "a number of terms (4), or terms and A's shape F1xC1xh1xw1 ('4:16x8x3x1')",
    "lrcp": (f"the CP rank R with {param('factor_rank', 'L', cli='L')}, or R:L (24:8), or a fraction of the "
             "layer's cost"),
}
# What --decomposition auto tries per layer (lrcp too when a factor rank is given; gkpd's cost
# depends on its factor shapes more than on a rank, so it is left to an explicit choice).
AUTO = ("cp", "tucker2", "svd")
# What --decomposition auto's budget gives a layer, in order of preference: CP and Tucker-2
# where CP applies (k x k kernels), else SVD (1x1 kernels, Gemm, MatMul).
AUTO_SPATIAL = ("cp", "tucker2")
AUTO_POINTWISE = ("svd",)


def get(name: str) -> Decomposition:
    """The decomposition called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OnnxCpError(f"decomposition={name!r}: choose one of {', '.join(NAMES)}") from None


def budget_candidates(requested: str, site_decomposition: str, spec) -> tuple[str, ...]:
    """The decompositions whose candidates rank selection weighs for a layer: the one asked for
    (``site_decomposition``: what the site takes, svd for a Gemm), or with auto those of
    ``AUTO_SPATIAL`` or ``AUTO_POINTWISE`` that apply."""
    if requested != "auto":
        return (site_decomposition,)
    preferred = AUTO_SPATIAL if get(DEFAULT).applies(spec) is None else AUTO_POINTWISE
    return tuple(d for d in preferred if get(d).applies(spec) is None)


def rule_decomposition(requested: str) -> str:
    """What a --rank rule's layers are rewritten with when rank selection plans the others."""
    return DEFAULT if requested == "auto" else requested


def refusal(name: str, spec) -> str | None:
    """Why decomposition ``name`` (or every one auto tries) cannot rewrite a Conv of ``spec``."""
    if name != "auto":
        return get(name).applies(spec)
    reasons = [(n, get(n).applies(spec)) for n in AUTO]
    if any(reason is None for _, reason in reasons):
        return None
    return "; ".join(f"{n}: {reason}" for n, reason in reasons)


def for_form(form: str) -> Decomposition:
    """The decomposition that realizes ``form`` (cp4 -> cp, lrcp3 -> lrcp, ...)."""
    for decomposition in _REGISTRY.values():
        if form in decomposition.forms:
            return decomposition
    forms = [f for d in _REGISTRY.values() for f in d.forms]
    raise OnnxCpError(f"form={form!r}: choose one of {', '.join(forms)}")


__all__ = ["AUTO", "DEFAULT", "FORMS", "NAMES", "RANK_SYNTAX", "Decomposition", "Factors", "Realization", "for_form", "get",
           "refusal"]

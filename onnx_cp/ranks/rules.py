"""Fixed ranks from rank rules: the rank a layer gets, and the cap above which CP costs more.

A rank above a layer's cap (the rank at which the CP form costs as many multiply-adds as the
Conv) cannot make the layer faster, so the layer is kept and nothing is fitted for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx_cp.conv import cp_cost
from onnx_cp.discover import ConvSite


@dataclass(frozen=True)
class RankDecision:
    """The rank of one layer (None: keep the Conv, ``reason`` says why)."""

    rank: object  # an int; another decomposition's own rank where ``decomposition`` says so
    requested: int | float | str | None = None
    capped: bool = False  # the requested rank was above the layer's cap
    reason: str = ""
    cap: int | None = None  # set when capped
    decomposition: str | None = None  # set when rank selection chose it (--decomposition auto)


def rank_unit_cost(site: ConvSite, realize: str) -> tuple[int, int]:
    """(the Conv's multiply-adds, those of its CP form per unit of rank); before // per_rank is the cap."""
    spec = site.spec
    in_shape = site.in_shape or (1, spec.in_channels, 1, 1)
    out_shape = site.out_shape or (1, spec.out_channels, 1, 1)
    before = site.cost.macs if site.cost.macs is not None else \
        spec.out_channels * spec.in_per_group * spec.kernel[0] * spec.kernel[1]
    kind = "cp4" if realize == "auto" else realize  # auto: the cheaper form
    return before, cp_cost(kind, spec, 1, in_shape, out_shape, False).macs or 1


def choose_rank(site: ConvSite, config) -> RankDecision:
    """The rank that ``config``'s rules give an eligible site."""
    rule = config.rank_rule(site.names)
    if rule is None:
        return RankDecision(None, reason="no rank rule matches this layer")
    before, per_rank = rank_unit_cost(site, config.realize)
    cap = before // per_rank if config.cap_rank else None
    if isinstance(rule.value, float):
        rank = config.align_rank(max(1, int(rule.value * before // per_rank)))
    else:
        rank = rule.value
    if cap is not None and cap < 1:
        return RankDecision(None, rule.value, reason="no CP rank is cheaper than this Conv")
    if cap is not None and rank > cap:
        return RankDecision(None, rule.value, capped=True, cap=int(cap),
                            reason=f"rank {rank} exceeds {site.name}'s cap {int(cap)}: kept")
    return RankDecision(rank, rule.value)

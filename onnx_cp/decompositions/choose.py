"""The rank a rank rule gives one layer under a decomposition (cp keeps ranks/rules.py), and
whether that rank makes the layer cheaper than its Conv."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from onnx_cp.conv import ConvSpec, Cost
from onnx_cp.decompositions.base import Decomposition, Shape
from onnx_cp.errors import OnnxCpError


@dataclass(frozen=True)
class RankChoice:
    """A layer's rank under one decomposition (None: keep the Conv, ``reason`` says why)."""

    rank: Any | None
    capped: bool = False
    reason: str = ""


def cheaper(cost: Cost, budget: Cost) -> bool:
    """Fewer multiply-adds than ``budget`` (fewer parameters when either count is unknown)."""
    if cost.macs is not None and budget.macs is not None:
        return cost.macs < budget.macs
    return cost.params < budget.params


def scaled(cost: Cost, share: float) -> Cost:
    return Cost(None if cost.macs is None else int(cost.macs * share), int(cost.params * share))


def describe(rank, name: str = "") -> str:
    """A rank as the CLI writes it: 16, 16x12 (tucker2), 24:8 (lrcp), 4:16x8x3x1 (gkpd)."""
    if isinstance(rank, tuple) and len(rank) == 2 and isinstance(rank[1], tuple):
        return f"{rank[0]}:" + "x".join(map(str, rank[1]))
    if name == "lrcp":
        return f"{rank[0]}:{rank[1]}"
    if isinstance(rank, tuple):
        return "x".join(map(str, rank))
    return str(rank)


def choose_rank(d: Decomposition, value, spec: ConvSpec, in_shape: Shape, out_shape: Shape, conv: Cost,
                groups: list[np.ndarray] | None, *, factor_rank: int | None = None, cap_rank: bool = True,
                align: Callable[[int], int] = int) -> RankChoice:
    """The rank ``value`` (int, the decomposition's string, or a fraction of the Conv's cost)
    gives a layer; with ``cap_rank`` a rank whose form costs no less than the Conv keeps it."""
    try:
        if isinstance(value, float):
            rank = d.rank_within(spec, in_shape, out_shape, scaled(conv, value), factor_rank, align)
            if rank is None:
                return RankChoice(None, reason=f"no {d.name} rank costs under {value} of this Conv")
        else:
            rank = d.concrete(value, spec, groups, factor_rank, (in_shape, out_shape))
        cost = d.cost(d.forms[0], spec, rank, in_shape, out_shape, False)
    except OnnxCpError as exc:
        return RankChoice(None, reason=exc.message)  # a Message: the CLI shows its flags
    if cap_rank and not cheaper(cost, conv):
        return RankChoice(None, capped=True, reason=f"{d.name} at rank {describe(rank, d.name)} costs no less than "
                                                    "the Conv: kept")
    return RankChoice(rank)

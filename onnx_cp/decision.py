"""What is decided for one layer, from its rank rule or rank selection to the written model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Decision:
    """A layer's rank, or why it keeps its Conv (``rank`` None, ``reason`` says why)."""

    rank: Any = None  # an int, or the decomposition's own rank (tucker2: a pair; gkpd: terms and split)
    requested: int | float | str | None = None  # what the rule or the selection asked for
    capped: bool = False  # the requested rank was above the layer's cap
    reason: str = ""
    cap: int | None = None  # set when capped
    decomposition: str | None = None  # set when rank selection chose it (--decomposition auto)
    proxy: float | None = None  # rank selection: relative error of the layer's output on calibration inputs
    cost: float | None = None  # rank selection: cost at the rank, in the selection's unit (MACs or ms)
    fit: Any = None  # decompositions.Factors the selection already made at this rank

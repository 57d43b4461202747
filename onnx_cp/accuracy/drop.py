"""How much of the metric may be given up: an absolute drop in the metric's own units, or a share
of the original's value.

    Drop(0.01).allows(0.905, original=0.913)               # True: 0.8 points of a fraction
    Drop(0.02, "relative").floor(original=50.0)            # 49.0
    drop_from_percent(1)                                   # the CLI's --max-drop 1 == Drop(0.01)

The command line takes ``--max-drop`` in percent (one percentage point of a metric in [0, 1], or
one percent of the original's value); the API's ``max_drop`` is the fraction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from onnx_cp.errors import OnnxCpError, param

DROP_KINDS = ("absolute", "relative")
_SLACK = 1e-9  # a drop of exactly max_drop is allowed, whatever the float rounding of the subtraction


def max_drop_param(value: float) -> str:
    """``max_drop`` in a message: ``max_drop=0.01`` for the API, ``--max-drop 1`` (percent) for the CLI."""
    return param("max_drop", repr(value), cli=f"{value * 100:g}")


@dataclass(frozen=True)
class Drop:
    """``max_drop`` below the original's score: absolute (metric units) or relative (a share of it)."""

    max_drop: float
    kind: str = "absolute"

    def __post_init__(self):
        value = self.max_drop
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            shown = max_drop_param(value) if number else param("max_drop", repr(value))
            raise OnnxCpError(f"{shown} must be a number of at least 0 ({max_drop_param(0.01)} allows "
                              "one point of a metric in [0, 1])", usage=True)
        if self.kind not in DROP_KINDS:
            raise OnnxCpError(f"{param('drop', repr(self.kind), cli=str(self.kind))} is unknown; use one of "
                              f"{', '.join(DROP_KINDS)}", usage=True)

    def floor(self, original: float) -> float:
        """The lowest score allowed for a model whose original scores ``original``."""
        allowed = self.max_drop * abs(original) if self.kind == "relative" else self.max_drop
        return original - allowed

    def allows(self, score: float, original: float) -> bool:
        """Whether ``score`` is within the allowed drop of ``original`` (NaN never is)."""
        return score >= self.floor(original) - _SLACK * max(1.0, abs(original))

    def of(self, score: float, original: float) -> float:
        """The drop of ``score`` from ``original`` in ``max_drop``'s units (negative: a gain)."""
        if self.kind == "absolute":
            return original - score
        if original == 0:
            return 0.0 if score >= 0 else math.inf
        return (original - score) / abs(original)


def drop_from_percent(percent: float, kind: str = "absolute") -> Drop:
    """The drop the command line's ``--max-drop PERCENT`` means."""
    return Drop(percent / 100, kind)

"""The progress record that the solvers hand to their callbacks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SolverState:
    """Progress of a CP solver, passed to ``callback(state)`` after every accepted step.

    Attributes
    ----------
    iteration : int
        Number of accepted steps so far; 0 is the initialization.
    rel_error : float
        ``||T - [[U]]|| / ||T||`` at this iteration (0.0 for a zero tensor).
    elapsed : float
        Wall-clock seconds since the solver was called (initialization included).
    """

    iteration: int
    rel_error: float
    elapsed: float

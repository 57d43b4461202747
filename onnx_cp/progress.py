"""How long work reports its progress: ``progress(what, done, total)``, and labels for its stages.

A label reads ``phase: detail`` (``curves: conv1 rank 16``): the CLI shows the phase and an
estimate on a terminal, and one line per phase in a pipe.
"""
from __future__ import annotations

from typing import Callable

# Called as progress(what, done, total) as the work goes on.
Progress = Callable[[str, int, int], None]


def staged(progress: Progress | None, what: str) -> Progress | None:
    """``progress`` with every label under the phase ``what`` (None stays None)."""
    if progress is None:
        return None
    return lambda label, done, total: progress(f"{what}: {label}" if label else what, done, total)


def phase(label: str) -> str:
    """The phase of a label: what comes before its first ``: ``."""
    return label.split(": ", 1)[0]

"""How long work reports its progress: ``progress(what, done, total)``, and labels for its stages."""
from __future__ import annotations

from typing import Callable

# Called as progress(what, done, total) as the work goes on.
Progress = Callable[[str, int, int], None]


def staged(progress: Progress | None, what: str) -> Progress | None:
    """``progress`` with every label prefixed by ``what`` (None stays None)."""
    if progress is None:
        return None
    return lambda label, done, total: progress(f"{what} {label}".strip(), done, total)

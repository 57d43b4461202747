"""How a long command shows its progress: on a terminal, the phase with a bar and an estimate of
the time left; in a pipe, one line per phase on stderr (what a log keeps); nothing with -q."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from onnx_cp.progress import Progress, phase


@contextmanager
def progress_view(console, quiet: bool) -> Iterator[Progress]:
    """A ``progress(label, done, total)`` callback for ``console`` (a stderr rich Console)."""
    if quiet:
        yield lambda label, done, total: None
        return
    if not console.is_terminal:
        yield _phase_lines(console)
        return
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # transient: the bar is gone before the table, and before any error line
    with Bar(TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.completed}/{task.total}"),
             TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def update(label: str, done: int, total: int) -> None:
            bar.update(task, description=label or "done", completed=done, total=total)

        yield update


def _phase_lines(console) -> Progress:
    start = time.perf_counter()
    seen: list[str] = []

    def update(label: str, done: int, total: int) -> None:
        current = phase(label)
        if seen and seen[-1] == current:
            return
        seen.append(current)
        count = f" ({total} steps)" if total and total > 1 else ""
        console.print(f"[{time.perf_counter() - start:7.1f} s] {current}{count}", markup=False, highlight=False)

    return update

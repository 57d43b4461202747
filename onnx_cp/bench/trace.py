"""Read onnxruntime's profiler output (a Chrome trace JSON) into per-run node times."""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class TraceRuns:
    """Kernel time per node name (microseconds), one dict per kept run; and each node's op."""

    runs: tuple[dict[str, float], ...]
    ops: dict[str, str]


def load_trace(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("traceEvents", [])
    return [e for e in data if isinstance(e, dict)]


def split_runs(events: list[dict], *, skip: int = 0) -> TraceRuns:
    """Group ``<node>_kernel_time`` events by the ``model_run`` they fall in; drop the first ``skip`` runs.

    Without ``model_run`` events (another onnxruntime version), each node's k-th event is taken
    to belong to run k.
    """
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(_SUFFIX)]
    ops = {e["name"][: -len(_SUFFIX)]: str((e.get("args") or {}).get("op_name", "?")) for e in kernels}
    windows = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                     for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs: list[dict[str, float]]
    if windows:
        starts = [w[0] for w in windows]
        runs = [{} for _ in windows]
        for e in kernels:
            k = bisect.bisect_right(starts, float(e["ts"])) - 1
            if k >= 0 and float(e["ts"]) <= windows[k][1]:
                _add(runs[k], e)
    else:
        runs = []
        seen: dict[str, int] = {}
        for e in kernels:
            k = seen.get(e["name"], 0)
            seen[e["name"]] = k + 1
            while len(runs) <= k:
                runs.append({})
            _add(runs[k], e)
    return TraceRuns(tuple(runs[skip:]), ops)


def _add(run: dict[str, float], event: dict) -> None:
    name = event["name"][: -len(_SUFFIX)]
    run[name] = run.get(name, 0.0) + float(event.get("dur", 0))

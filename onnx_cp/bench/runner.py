"""Run several sessions in alternation so that machine drift (heat, other processes) hits all alike."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np

from onnx_cp.bench.feeds import describe_feeds
from onnx_cp.errors import OnnxCpError, param

if TYPE_CHECKING:
    import onnxruntime as ort

# callback(phase, done, total): phase is "latency" or "profile"; done counts session runs.
Callback = Optional[Callable[[str, int, int], None]]


def alternate(sessions: Sequence[ort.InferenceSession], labels: Sequence[str], feeds: Mapping[str, np.ndarray],
              *, warmup: int, runs: int, phase: str, callback: Callback = None) -> list[list[float]]:
    """``warmup`` untimed then ``runs`` timed rounds; each round runs every session once.

    The first session of a round rotates (A B C, B C A, C A B, ...) so no model always runs
    right after the same neighbour. Returns each session's timed runs in milliseconds.
    """
    n = len(sessions)
    total = (warmup + runs) * n
    done = 0
    samples: list[list[float]] = [[] for _ in sessions]
    for round_ in range(warmup + runs):
        for k in range(n):
            i = (round_ + k) % n
            start = time.perf_counter_ns()
            run_once(sessions[i], labels[i], feeds)
            elapsed = time.perf_counter_ns() - start
            if round_ >= warmup:
                samples[i].append(elapsed / 1e6)
            done += 1
            if callback is not None:
                callback(phase, done, total)
    return samples


def run_once(session: ort.InferenceSession, label: str, feeds: Mapping[str, np.ndarray]) -> None:
    try:
        session.run(None, feeds)
    except Exception as exc:  # onnxruntime's pybind exception types
        line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise OnnxCpError(f"onnxruntime failed to run {label} on random inputs ({describe_feeds(feeds)}): "
                          f"{line}; check {param('input_shapes')} and {param('batch')}") from exc

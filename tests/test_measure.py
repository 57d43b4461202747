"""The measurement service's whole-model comparison: a busy machine's timing is taken again, and the
steadiest kept. Injected timings, no clock."""
from __future__ import annotations

from types import SimpleNamespace

import onnx
import pytest

from onnx_cp import measure
from onnx_cp.measure import Latency, Measurement


def _timed(spreads: list[float], scale: float = 1.0):
    """A measurement whose successive whole-model timings have the given spreads (ms: 100 -> 40 + k,
    times ``scale``)."""
    calls = []

    def whole(models):
        k = len(calls)
        calls.append(k)
        return [Latency(100.0 * scale, spreads[k]), Latency((40.0 + k) * scale, spreads[k])]

    return Measurement.injected(SimpleNamespace(layers=lambda models: [{} for _ in models], whole=whole)), calls


@pytest.mark.parametrize("spreads, timings, kept", [
    ([0.08], 1, 0),  # quiet: timed once
    ([0.24, 0.06], 2, 1),  # busy, then quiet: the quiet one
    ([0.30, 0.20, 0.25], 3, 1),  # busy throughout: timed 1 + RETRIES times, the steadiest kept
])
def test_a_busy_comparison_is_timed_again_and_the_steadiest_kept(spreads, timings, kept):
    assert measure.RETRIES == 2 and measure.NOISY == 0.15 and measure.JITTER_MS == 0.05
    timer, calls = _timed(spreads)
    check = timer.compare(onnx.ModelProto(), onnx.ModelProto())
    assert len(calls) == timings
    assert check.rewritten_ms == 40.0 + kept and check.spread == spreads[kept]


def test_a_tiny_models_wide_runs_are_jitter_not_a_busy_machine():
    timer, calls = _timed([0.4, 0.05], scale=0.001)  # 0.1 ms -> 0.04 ms, runs 40% wide: 0.016 ms
    check = timer.compare(onnx.ModelProto(), onnx.ModelProto())
    assert len(calls) == 1 and not check.busy and check.spread == 0.4

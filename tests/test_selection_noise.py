"""Timing noise does not change what --target-speedup chooses: measured figures steer the selection
in steps (ranks.grid.on_lattice), so timings a few percent apart give the same model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from golden_timing import FakeTiming
from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report
from onnx_cp.ranks.grid import SHARE_STEP, on_lattice

MNIST = Path(__file__).resolve().parent.parent / "models" / "mnist_cnn.onnx"
SHAPES = {"input": (1, 1, 28, 28)}
FIT = dict(max_iter=20, stabilize="never", jobs=1)


class NoisyTiming(FakeTiming):
    """FakeTiming with every figure multiplied by a seeded factor within ``1 +- spread``."""

    def __init__(self, original, input_shapes, seed: int, spread: float):
        super().__init__(original, input_shapes)
        self.rng, self.spread = np.random.default_rng(seed), spread

    def _noise(self) -> float:
        return float(1 + self.rng.uniform(-self.spread, self.spread))

    def layers(self, models):
        return [{k: v * self._noise() for k, v in times.items()} for times in super().layers(models)]

    def whole(self, models):
        return [t * self._noise() for t in super().whole(models)]


def test_on_lattice_rounds_to_the_nearest_power_of_the_step():
    for value in np.geomspace(0.011, 1.0, 97):
        snapped = on_lattice(float(value))
        k = math.log(snapped) / math.log(SHARE_STEP)
        assert abs(k - round(k)) < 1e-9
        assert abs(math.log(snapped / value)) <= math.log(SHARE_STEP) / 2 + 1e-12
        assert on_lattice(snapped) == pytest.approx(snapped)


def _ranks(timing) -> list:
    model = onnx.load(str(MNIST))
    config = RewriteConfig(selection=RankSelection(target_speedup=3.0, candidates=3, calib_count=4),
                           input_shapes=SHAPES, **FIT)
    result = rewrite_with_report(model, config, timer=timing)
    return [(layer.node, layer.status, layer.rank) for layer in result.report.layers]


def test_timings_a_few_percent_apart_choose_the_same_ranks():
    model = onnx.load(str(MNIST))
    quiet = _ranks(FakeTiming(model, SHAPES))
    assert any(status == "rewritten" for _, status, _ in quiet)
    for seed in range(3):
        assert _ranks(NoisyTiming(model, SHAPES, seed, spread=0.03)) == quiet, f"noise seed {seed}"

"""One pass of the original model over the calibration inputs: what each chosen layer sees.

Per layer it keeps the per-mode moments of the patches its Conv reads (for data-aware fits)
and the original outputs at sampled positions (the targets of recovery), never whole maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.calibrate.activations import batch_size, stream
from onnx_cp.calibrate.patches import Positions, extract, pixels, sample_positions
from onnx_cp.calibrate.statistics import ModeMoments, MomentAccumulator
from onnx_cp.sites import Site
from onnx_cp.progress import Progress

# Floats of patches one layer may hold for recovery (128 MiB in float32).
PATCH_FLOATS = 1 << 25


@dataclass(frozen=True)
class Observation:
    """What the original model showed at one layer."""

    positions: Positions  # sampled output pixels, training samples first, then held-back ones
    held: np.ndarray  # indices into positions of the held-back samples' pixels
    targets: np.ndarray  # (M, T) the original Conv's outputs there, before the activation
    moments: list[ModeMoments]  # per group, of the patches at the training positions


def layer_positions(site: Site, train: int, total: int, count: int, seed: int) -> tuple[Positions, np.ndarray]:
    """Positions for ``site``: about ``count`` over the training samples and a quarter of that
    over the held-back ones; the count is capped so the patches fit ``PATCH_FLOATS``."""
    spec = site.spec
    per_patch = spec.in_channels * spec.kernel[0] * spec.kernel[1]
    count = max(64, min(count, PATCH_FLOATS // per_patch))
    out_hw = tuple(site.out_shape[2:])
    rng = np.random.default_rng([seed, sum(map(ord, site.key))])
    fit = sample_positions(rng, range(train), out_hw, count)
    hold = sample_positions(rng, range(train, total), out_hw, max(16, count // 4)) if total > train else None
    if hold is None:
        return fit, np.zeros(0, dtype=np.int64)
    joined = Positions(*(np.concatenate([getattr(fit, f), getattr(hold, f)]) for f in ("sample", "row", "col")))
    return joined, np.arange(len(fit), len(joined))


def observe(model: onnx.ModelProto, sites: Sequence[Site], x: np.ndarray, train: int, count: int,
            seed: int, threads: int = 1, progress: Progress | None = None) -> dict[str, Observation]:
    """Every site's Observation, from one batched pass of ``model`` over ``x`` (the first
    ``train`` samples train, the rest are held back)."""
    placed = {s.key: layer_positions(s, train, len(x), count, seed) for s in sites}
    moments = {s.key: MomentAccumulator(s.spec.in_channels, s.spec.kernel, s.spec.group) for s in sites}
    targets: dict[str, list[np.ndarray]] = {s.key: [] for s in sites}
    wanted = [t for s in sites for t in (s.node.input[0], s.key)]
    batches = -(-len(x) // batch_size(model))
    for done, (start, values) in enumerate(stream(model, wanted, x, threads=threads)):
        if progress:
            progress("reading the layers' inputs and outputs", done, batches)
        for s in sites:
            positions, _ = placed[s.key]
            out_hw = tuple(s.out_shape[2:])
            if start < train:
                patches = extract(values[s.node.input[0]], start, positions, s.spec, out_hw)
                fit_rows = positions.sample[positions.of_samples(start, start + len(values[s.key]))] < train
                moments[s.key].add(patches[fit_rows])
            targets[s.key].append(pixels(values[s.key], start, positions))
    return {s.key: Observation(placed[s.key][0], placed[s.key][1], np.concatenate(targets[s.key]),
                               moments[s.key].result()) for s in sites}

"""A Conv's receptive fields at sampled output positions, and what a Conv or a CP chain makes of them.

Every output pixel of a Conv depends on one input patch (C x kh x kw, zero outside the image),
so a layer can be judged and trained on a sample of (patch, output pixel) pairs instead of
whole feature maps: memory stays bounded whatever the model, and the CP chain is exact on
them (its first stage maps zero to zero, so padding commutes with it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_cp.conv import ConvSpec


@dataclass(frozen=True)
class Positions:
    """Sampled output pixels: sample index (into the feeds), row and column."""

    sample: np.ndarray
    row: np.ndarray
    col: np.ndarray

    def __len__(self) -> int:
        return len(self.sample)

    def of_samples(self, start: int, stop: int) -> np.ndarray:
        """Indices of the positions whose sample lies in [start, stop)."""
        return np.flatnonzero((self.sample >= start) & (self.sample < stop))


def sample_positions(rng: np.random.Generator, samples: Sequence[int], out_hw: tuple[int, int],
                     count: int) -> Positions:
    """About ``count`` distinct output positions spread evenly over ``samples``."""
    height, width = out_hw
    per = max(1, min(height * width, -(-count // max(1, len(samples)))))
    picks = [(s, p) for s in samples for p in rng.choice(height * width, size=per, replace=False)]
    sample = np.array([s for s, _ in picks], dtype=np.int64)
    flat = np.array([p for _, p in picks], dtype=np.int64)
    return Positions(sample, flat // width, flat % width)


def output_hw(spec: ConvSpec, in_hw: tuple[int, ...]) -> tuple[int, int]:
    """The Conv's output height and width for an input of ``in_hw``."""
    if spec.auto_pad.startswith("SAME"):
        return tuple(-(-size // s) for size, s in zip(in_hw, spec.strides))
    top, left, bottom, right = spec.pads
    return tuple((size + begin + end - d * (k - 1) - 1) // s + 1 for size, begin, end, k, s, d in
                 zip(in_hw, (top, left), (bottom, right), spec.kernel, spec.strides, spec.dilations))


def effective_pads(spec: ConvSpec, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) as run, SAME_* auto padding resolved for this input size."""
    if not spec.auto_pad.startswith("SAME"):
        return spec.pads
    begin, end = [], []
    for axis in range(2):
        total = max((out_hw[axis] - 1) * spec.strides[axis] + (spec.kernel[axis] - 1) * spec.dilations[axis]
                    + 1 - in_hw[axis], 0)
        small, large = total // 2, total - total // 2
        first = small if spec.auto_pad == "SAME_UPPER" else large
        begin.append(first)
        end.append(total - first)
    return begin[0], begin[1], end[0], end[1]


def extract(x: np.ndarray, first_sample: int, positions: Positions, spec: ConvSpec,
            out_hw: tuple[int, int]) -> np.ndarray:
    """The input patches (M, C, kh, kw) of ``positions`` whose samples are in the batch ``x``
    (N, C, H, W), sample ``first_sample`` first; in the order of ``positions.of_samples``."""
    pick = positions.of_samples(first_sample, first_sample + len(x))
    top, left, bottom, right = effective_pads(spec, x.shape[2:], out_hw)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.strides, spec.dilations
    rows = positions.row[pick, None] * sh + np.arange(kh) * dh  # (M, kh)
    cols = positions.col[pick, None] * sw + np.arange(kw) * dw  # (M, kw)
    n = positions.sample[pick] - first_sample
    out = padded[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (M, kh, kw, C)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def pixels(y: np.ndarray, first_sample: int, positions: Positions) -> np.ndarray:
    """The values (M, C) of ``y`` (N, C, H, W) at ``positions`` whose samples are in the batch."""
    pick = positions.of_samples(first_sample, first_sample + len(y))
    return y[positions.sample[pick] - first_sample, :, positions.row[pick], positions.col[pick]]




def conv_outputs(patches: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, group: int) -> np.ndarray:
    """What the Conv with ``weight`` (T, S/G, kh, kw) outputs (M, T) for the patches."""
    per_in, per_out = patches.shape[1] // group, weight.shape[0] // group
    outs = [patches[:, g * per_in:(g + 1) * per_in].reshape(len(patches), -1).astype(np.float64)
            @ weight[g * per_out:(g + 1) * per_out].reshape(per_out, -1).T.astype(np.float64)
            for g in range(group)]
    y = np.concatenate(outs, axis=1)
    return y if bias is None else y + bias

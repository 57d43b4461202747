"""A layer's input statistics, measured on the patches its Conv reads on calibration inputs
(decompositions.moments says what they are and how the fits use them)."""
from __future__ import annotations

import numpy as np

from onnx_cp.decompositions.moments import ModeMoments


class MomentAccumulator:
    """Sums of per-mode outer products over batches of patches (M, C, kh, kw)."""

    def __init__(self, channels: int, kernel: tuple[int, int], group: int):
        self.group, self.per = group, channels // group
        self.sums = [[np.zeros((self.per, self.per)), np.zeros((kernel[0],) * 2), np.zeros((kernel[1],) * 2)]
                     for _ in range(group)]
        self.count = 0

    def add(self, patches: np.ndarray) -> None:
        for g, sums in enumerate(self.sums):
            p = patches[:, g * self.per:(g + 1) * self.per].astype(np.float64)
            sums[0] += np.einsum("msyx,mtyx->st", p, p, optimize=True)
            sums[1] += np.einsum("msyx,msYx->yY", p, p, optimize=True)
            sums[2] += np.einsum("msyx,msyX->xX", p, p, optimize=True)
        self.count += len(patches)

    def result(self) -> list[ModeMoments]:
        return [ModeMoments(*(_normalized(s) for s in sums), self.count) for sums in self.sums]


def _normalized(moment: np.ndarray) -> np.ndarray:
    trace = float(np.trace(moment))
    return moment / trace * len(moment) if trace > 0 else np.eye(len(moment))


def samples_needed(in_per_group: int, kernel: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Calibration samples whose patches span the layer's patch space (S * kh * kw dimensions),
    with 16 positions per sample counted as independent (neighbouring pixels are alike)."""
    dims = in_per_group * kernel[0] * kernel[1]
    per_sample = min(16, out_hw[0] * out_hw[1])
    return -(-dims // per_sample)

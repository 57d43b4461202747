"""A seeded split of the data: the part that chooses, and the held-back part whose figure is reported.

    parts = split_data(data, holdout=0.3, seed=0)
    parts.selection["x"], parts.holdout["x"]       # disjoint rows, each part at least MIN_PART samples

Ranks chosen on one part and judged on the same part would flatter the result; the held-back part
chose nothing, so the drop measured there is the one promised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from onnx_cp.accuracy.data import sample_count
from onnx_cp.errors import OnnxCpError, param

MIN_PART = 20  # samples on each side; fewer make a one-sample change worth 5 points


@dataclass(frozen=True)
class DataSplit:
    """The data restricted to each part's rows (sorted indices into the whole data)."""

    selection: dict[str, np.ndarray]
    holdout: dict[str, np.ndarray]
    selection_rows: np.ndarray
    holdout_rows: np.ndarray


def split_data(data: Mapping[str, np.ndarray], holdout: float = 0.3, seed: int = 0) -> DataSplit:
    """Hold back ``round(holdout * N)`` samples drawn at random (``seed``); the rest choose.

    Refused in one line (OnnxCpError, usage) when ``holdout`` is not in (0, 1) or either part
    would have fewer than MIN_PART samples.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise OnnxCpError(f"{param('holdout', repr(holdout))} is the share of samples held back; give a number "
                          "between 0 and 1, like 0.3", usage=True)
    count = sample_count(data)
    held = round(count * holdout)
    if min(held, count - held) < MIN_PART:
        raise OnnxCpError(f"the data holds {count} samples: {param('holdout', repr(holdout))} holds back {held} and "
                          f"leaves {count - held} to choose with, and each part needs at least {MIN_PART}; pass at "
                          f"least {_fewest_samples(holdout)} samples or change {param('holdout')}", usage=True)
    order = np.random.default_rng(seed).permutation(count)
    holdout_rows, selection_rows = np.sort(order[:held]), np.sort(order[held:])
    return DataSplit(subset(data, selection_rows), subset(data, holdout_rows), selection_rows, holdout_rows)


def subset(data: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """``data`` at ``rows``: every array with one entry per sample is indexed, any other (a charset,
    class names of another length, a scalar) is kept whole."""
    count = sample_count(data)
    return {key: array[rows] if array.ndim and len(array) == count else array for key, array in data.items()}


def _fewest_samples(holdout: float) -> int:
    """The smallest count whose split leaves MIN_PART samples on each side."""
    count = 2 * MIN_PART
    while min(round(count * holdout), count - round(count * holdout)) < MIN_PART:
        count += 1
    return count

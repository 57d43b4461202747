"""Checks of the solvers' inputs; messages quote the offending value and say what to do."""
from __future__ import annotations

import numbers

import numpy as np


def as_tensor(tensor) -> tuple[np.ndarray, np.dtype]:
    """Return a float64 copy of ``tensor`` and the dtype that results should have.

    Raises ValueError for complex data, fewer than 2 modes, empty modes, NaN or Inf.
    """
    arr = np.asarray(tensor)
    if np.iscomplexobj(arr):
        raise ValueError(f"tensor has complex dtype {arr.dtype}; only real tensors are supported")
    if arr.ndim < 2:
        raise ValueError(f"tensor has {arr.ndim} mode(s) (shape {arr.shape}); CP needs at least 2")
    if 0 in arr.shape:
        raise ValueError(f"tensor has an empty mode (shape {arr.shape})")
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    t = np.array(arr, dtype=np.float64, order="C", copy=True)
    n_nan = int(np.count_nonzero(np.isnan(t)))
    n_inf = int(np.count_nonzero(np.isinf(t)))
    if n_nan or n_inf:
        what = " and ".join(
            s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if s
        )
        raise ValueError(
            f"tensor contains {what} values; CP fitting needs finite entries "
            "(replace or mask them before decomposing)"
        )
    return t, out_dtype


def as_rank(rank) -> int:
    """Return ``rank`` as a Python int >= 1, or raise ValueError quoting it."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank!r}")
    return int(rank)


def as_rng(random_state) -> np.random.Generator:
    """Turn None, an int, a Generator or a legacy RandomState into a Generator."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        # Derive a seed from the legacy generator so the caller's stream still advances.
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    raise ValueError(
        f"random_state must be None, an int, a numpy Generator or RandomState, got {random_state!r}"
    )


def check_positive(name: str, value, *, allow_none: bool = False, allow_zero: bool = True):
    """Raise ValueError unless ``value`` is a finite number >= 0 (> 0 if not allow_zero)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")

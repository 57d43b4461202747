"""BLAS thread control for the solvers.

A Gauss-Newton step is mostly small products (R x R Gramians, I_n x R blocks, vectors of a
few thousand entries). Multi-threaded OpenBLAS wakes its workers for each of them; on the
2-core development machine that made cp_nls 3x (R=200) to 12x (R=32) slower than one
thread, and giving the large products two threads back gained 5% on an idle machine but
cost 3x while another process kept one core busy. The solvers therefore run on one BLAS thread.
threadpoolctl does the switching when it is installed; without it the process-wide setting
(for example ``OPENBLAS_NUM_THREADS``) applies unchanged.
"""
from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def single_blas_thread():
    """Limit BLAS to one thread inside the block (a no-op without threadpoolctl)."""
    controller = _controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield

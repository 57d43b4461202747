"""Behaviour of the CP solvers in onnx_cp.solver (no ONNX involved)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.cp_tensor import CPTensor

from onnx_cp.solver import (
    Degeneracy,
    SolverState,
    cp_als,
    cp_nls,
    degeneracy,
    relative_error,
)


def random_cp(shape, rank, seed, scale=1.0):
    """An exact-rank CP model with Gaussian factors (seeded)."""
    rng = np.random.default_rng(seed)
    return CPTensor((np.full(rank, scale), [rng.standard_normal((s, rank)) for s in shape]))


def low_rank_tensor(shape, rank, seed):
    return tl.cp_to_tensor(random_cp(shape, rank, seed))


def record(states):
    """A callback that appends every SolverState to ``states``."""
    return lambda state: states.append(state)


# ---------------------------------------------------------------- exact recovery

@pytest.mark.parametrize(
    "shape, rank",
    [
        ((24, 16, 3, 3), 10), ((12, 10, 5, 5), 6), ((15, 12, 10), 8), ((30, 20), 5),
        # Size-1 modes: a first conv layer (one input channel) and a 1-D kernel.
        ((20, 1, 5, 5), 6), ((12, 8, 1, 5), 5),
    ],
)
def test_exact_rank_tensor_is_recovered(shape, rank):
    tensor = low_rank_tensor(shape, rank, seed=1)
    cp = cp_nls(tensor, rank, random_state=0)
    assert relative_error(tensor, cp) < 1e-8
    np.testing.assert_allclose(tl.cp_to_tensor(cp), tensor, atol=1e-7 * np.abs(tensor).max())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    t=st.integers(4, 20),
    s=st.integers(4, 20),
    k=st.sampled_from([1, 3, 5]),
    data=st.data(),
)
def test_exact_rank_4d_kernels_are_recovered_over_shapes(t, s, k, data):
    # Ranks up to min(T, S) keep the decomposition essentially unique (Kruskal).
    rank = data.draw(st.integers(1, min(t, s)), label="rank")
    tensor = low_rank_tensor((t, s, k, k), rank, seed=t * 100 + s)
    cp = cp_nls(tensor, rank, random_state=0, max_iter=1000)
    assert relative_error(tensor, cp) < 1e-8


@settings(max_examples=20, deadline=None, derandomize=True)
@given(dims=st.lists(st.integers(3, 12), min_size=3, max_size=3), data=st.data())
def test_exact_rank_3d_tensors_are_recovered_over_shapes(dims, data):
    rank = data.draw(st.integers(1, min(dims)), label="rank")
    tensor = low_rank_tensor(tuple(dims), rank, seed=sum(dims))
    cp = cp_nls(tensor, rank, random_state=0, max_iter=1000)
    assert relative_error(tensor, cp) < 1e-8


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=5), rank=st.integers(1, 4))
def test_mttkrps_match_tensorly_for_every_mode(shape, rank):
    from onnx_cp.solver._kernels import Matricization

    rng = np.random.default_rng(len(shape) * 10 + rank)
    x = rng.standard_normal(shape)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    mat = Matricization(tuple(shape))
    got = mat.mttkrps(mat.matrix(x), factors)
    for mode, m in enumerate(got):
        expected = tl.unfold(x, mode) @ tl.tenalg.khatri_rao(factors, skip_matrix=mode)
        np.testing.assert_allclose(m, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size, k", [(6, 6), (6, 2), (300, 4), (300, 200)])
def test_svd_start_takes_the_leading_eigenvectors_of_every_unfolding(size, k):
    # Both branches (full and partial eigendecomposition) and every mode position (the first
    # and last modes skip the transposed copy).
    from onnx_cp.solver._init import _leading_eigenvectors, _unfolding_gram

    rng = np.random.default_rng(size + k)
    x = rng.standard_normal((3, 4, 2, 5))
    for mode in range(x.ndim):
        np.testing.assert_allclose(_unfolding_gram(x, mode), tl.unfold(x, mode) @ tl.unfold(x, mode).T,
                                   rtol=1e-12, atol=1e-12)
    q = np.linalg.qr(rng.standard_normal((size, size)))[0]
    values = np.geomspace(1.0, 1e-3, size)
    vecs = _leading_eigenvectors((q * values) @ q.T, k)
    assert vecs.shape == (size, k) and vecs.flags["C_CONTIGUOUS"]
    # Each column is the eigenvector of the next largest eigenvalue, up to sign.
    np.testing.assert_allclose(np.abs(np.sum(vecs * q[:, :k], axis=0)), 1.0, atol=1e-8)


def test_a_size_one_mode_fits_as_well_as_without_it():
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((32, 25)) @ np.diag(0.8 ** np.arange(25)) @ rng.standard_normal((25, 25))
    kernel = kernel.reshape(32, 1, 5, 5)
    with_mode = relative_error(kernel, cp_nls(kernel, 12, random_state=0))
    without = relative_error(kernel[:, 0], cp_nls(kernel[:, 0], 12, random_state=0))
    assert with_mode < without * 1.05 + 1e-6


# ---------------------------------------------------------------- monotonicity, determinism

@pytest.mark.parametrize("init", ["svd", "random", "als"])
def test_error_never_increases(init):
    tensor = np.random.default_rng(2).standard_normal((16, 12, 3, 3))
    states: list[SolverState] = []
    cp_nls(tensor, 12, init=init, random_state=0, max_iter=150, callback=record(states))
    errors = [s.rel_error for s in states]
    assert len(errors) > 10
    assert all(b <= a for a, b in zip(errors, errors[1:]))
    assert [s.iteration for s in states] == list(range(len(states)))
    assert all(b.elapsed >= a.elapsed for a, b in zip(states, states[1:]))


def test_same_seed_gives_identical_factors():
    tensor = np.random.default_rng(3).standard_normal((10, 9, 3, 3))
    a = cp_nls(tensor, 7, init="random", random_state=5, max_iter=30)
    b = cp_nls(tensor, 7, init="random", random_state=5, max_iter=30)
    c = cp_nls(tensor, 7, init="random", random_state=6, max_iter=30)
    np.testing.assert_array_equal(a.weights, b.weights)
    for fa, fb in zip(a.factors, b.factors):
        np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(a.weights, c.weights)


# ---------------------------------------------------------------- ranks and shapes

@pytest.mark.parametrize("init", ["svd", "random", "als"])
def test_rank_larger_than_every_dimension_works(init):
    tensor = np.random.default_rng(4).standard_normal((5, 4, 3, 3))
    states = []
    cp = cp_nls(tensor, 9, init=init, random_state=0, max_iter=200, callback=record(states))
    assert [f.shape for f in cp.factors] == [(5, 9), (4, 9), (3, 9), (3, 9)]
    assert all(np.all(np.isfinite(f)) for f in cp.factors)
    assert relative_error(tensor, cp) < states[0].rel_error


def test_output_is_normalized_and_reconstructs():
    tensor = low_rank_tensor((8, 7, 3, 3), 4, seed=5) * 1e3
    cp = cp_nls(tensor, 4, random_state=0)
    for f in cp.factors:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, rtol=1e-12)
    assert np.all(np.diff(cp.weights) <= 0)
    np.testing.assert_allclose(tl.cp_to_tensor(cp), tensor, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "dtype, expected", [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float64)]
)
def test_output_dtype_follows_input(dtype, expected):
    tensor = (low_rank_tensor((6, 5, 3, 3), 3, seed=6) * 10).astype(dtype)
    cp = cp_nls(tensor, 3, random_state=0, max_iter=50)
    assert cp.weights.dtype == expected
    assert all(f.dtype == expected for f in cp.factors)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "value, message",
    [(np.nan, "tensor contains 3 NaN values"), (np.inf, "tensor contains 3 Inf values")],
)
def test_non_finite_tensor_is_rejected_with_a_count(value, message):
    tensor = np.ones((4, 3, 3, 3))
    tensor[0, 0, :, 0] = value
    with pytest.raises(ValueError, match=message):
        cp_nls(tensor, 2)
    with pytest.raises(ValueError, match=message):
        cp_als(tensor, 2)


@pytest.mark.parametrize("rank", [0, -3, 2.5, "4", True, None])
def test_bad_rank_is_rejected_quoting_it(rank):
    with pytest.raises(ValueError, match=f"got {rank!r}".replace("(", r"\(").replace(".", r"\.")):
        cp_nls(np.ones((3, 3, 3)), rank)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="'hosvd'"):
        cp_nls(np.ones((3, 3, 3)), 2, init="hosvd")


def test_mismatched_warm_start_is_rejected_quoting_shapes():
    cp = random_cp((4, 3, 3), 2, seed=0)
    with pytest.raises(ValueError, match=r"factors\[1\]\.shape=\(3, 2\) does not fit tensor\.shape\[1\]=5"):
        cp_nls(np.ones((4, 5, 3)), 2, init=cp)


@pytest.mark.parametrize("option", [{"max_time": -1.0}, {"tol": float("nan")}, {"max_iter": -1}])
def test_bad_options_are_rejected(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        cp_nls(np.ones((3, 3, 3)), 2, **option)


def test_zero_tensor_gives_zero_factors():
    states = []
    cp = cp_nls(np.zeros((4, 3, 3, 3), dtype=np.float32), 5, callback=record(states))
    assert np.all(cp.weights == 0) and cp.weights.dtype == np.float32
    assert all(np.all(f == 0) and f.shape == (s, 5) for f, s in zip(cp.factors, (4, 3, 3, 3)))
    assert [s.rel_error for s in states] == [0.0]
    assert relative_error(np.zeros((4, 3, 3, 3)), cp) == 0.0


# ---------------------------------------------------------------- stopping

def test_max_time_is_honoured():
    tensor = np.random.default_rng(7).standard_normal((64, 64, 3, 3))
    states = []
    cp_nls(tensor, 60, max_time=0.5, tol=0, max_iter=10**6, callback=record(states))
    # Checked before every trial step: overrun by about one iteration at most.
    assert 0.3 < states[-1].elapsed < 1.5


def test_callback_returning_true_stops():
    tensor = np.random.default_rng(8).standard_normal((10, 8, 3, 3))
    states = []

    def stop_at_three(state):
        states.append(state)
        return state.iteration == 3

    cp_nls(tensor, 6, callback=stop_at_three, tol=0)
    assert [s.iteration for s in states] == [0, 1, 2, 3]


def test_max_iter_zero_returns_the_initialization():
    tensor = np.random.default_rng(9).standard_normal((6, 5, 3))
    init = random_cp((6, 5, 3), 4, seed=1)
    cp = cp_nls(tensor, 4, init=init, max_iter=0)
    np.testing.assert_allclose(tl.cp_to_tensor(cp), tl.cp_to_tensor(init), atol=1e-12)


# ---------------------------------------------------------------- warm start

def test_warm_start_continues_from_its_error():
    tensor = np.random.default_rng(10).standard_normal((12, 10, 3, 3))
    first = cp_nls(tensor, 8, random_state=0, max_iter=5)
    states = []
    second = cp_nls(tensor, 8, init=first, callback=record(states), max_iter=50)
    start = relative_error(tensor, first)
    assert states[0].rel_error == pytest.approx(start, rel=1e-10)
    assert relative_error(tensor, second) < start


def test_warm_start_from_a_tuple_with_another_rank_is_resized():
    tensor = low_rank_tensor((8, 7, 3, 3), 5, seed=11)
    small = cp_nls(tensor, 3, random_state=0, max_iter=20)
    grown = cp_nls(tensor, 5, init=(small.weights, small.factors), random_state=0, max_iter=500)
    assert relative_error(tensor, grown) < 1e-6
    shrunk = cp_nls(tensor, 2, init=grown, max_iter=0)
    assert shrunk.weights.shape == (2,)


# ---------------------------------------------------------------- degeneracy and stabilization

def test_degeneracy_of_orthogonal_terms_is_one():
    q = [np.linalg.qr(np.random.default_rng(n).standard_normal((6, 3)))[0] for n in range(3)]
    deg = degeneracy(CPTensor((np.array([3.0, 2.0, 1.0]), q)))
    assert isinstance(deg, Degeneracy)
    assert deg.measure == pytest.approx(1.0)
    assert deg.max_term_norm == pytest.approx(3.0 / np.sqrt(14.0))


def cancelling_pair(shape, rank, seed, big=1e3, gap=1e-3):
    """A rank-``rank`` model with two extra huge terms that nearly cancel (plus its tensor)."""
    rng = np.random.default_rng(seed)
    base = random_cp(shape, rank, seed)
    a = [rng.standard_normal((s, 1)) for s in shape]
    b = [x.copy() for x in a]
    b[0] = b[0] + gap * rng.standard_normal((shape[0], 1))
    factors = [np.hstack([f, x, y]) for f, x, y in zip(base.factors, a, b)]
    weights = np.concatenate([base.weights, [big, -big]])
    model = CPTensor((weights, factors))
    tensor = tl.cp_to_tensor(model) + 0.05 * rng.standard_normal(shape)
    return tensor, model


def test_degeneracy_of_a_cancelling_pair_is_large():
    _, model = cancelling_pair((6, 5, 3, 3), 3, seed=12)
    deg = degeneracy(model)
    assert deg.measure > 1e3 and deg.max_term_norm > 10


def test_stabilize_removes_a_cancelling_pair_within_the_error_bound():
    tensor, model = cancelling_pair((6, 5, 3, 3), 3, seed=13)
    before = relative_error(tensor, model)
    fixed = cp_nls(tensor, 5, init=model, max_iter=0, stabilize=True)
    assert degeneracy(fixed).measure < degeneracy(model).measure / 100
    assert relative_error(tensor, fixed) <= 1.01 * before


def test_stabilize_lowers_degeneracy_of_a_fit_of_a_random_kernel():
    # At rank 16 an 8x8x3x3 Gaussian kernel is fitted by terms that cancel (measure ~1e4
    # after 1000 iterations; the cancellation grows as the fit converges).
    tensor = np.random.default_rng(1).standard_normal((8, 8, 3, 3))
    plain = cp_nls(tensor, 16, random_state=0, max_iter=1000)
    stable = cp_nls(tensor, 16, init=plain, max_iter=0, stabilize=True)
    assert degeneracy(plain).measure > 100
    assert degeneracy(stable).measure < degeneracy(plain).measure / 10
    assert relative_error(tensor, stable) <= 1.01 * relative_error(tensor, plain)


def test_stabilize_with_zero_slack_never_raises_the_error():
    tensor, model = cancelling_pair((6, 5, 3), 2, seed=14)
    same = cp_nls(tensor, 4, init=model, max_iter=0)  # normalized: weights are term norms
    fixed = cp_nls(tensor, 4, init=model, max_iter=0, stabilize=True, stabilize_slack=0.0)
    assert relative_error(tensor, fixed) <= relative_error(tensor, model) * (1 + 1e-9)
    assert np.sum(fixed.weights**2) < 1e-3 * np.sum(same.weights**2)


# ---------------------------------------------------------------- relative_error

def test_relative_error_matches_the_definition():
    rng = np.random.default_rng(15)
    tensor = rng.standard_normal((5, 4, 3))
    cp = random_cp((5, 4, 3), 2, seed=15)
    expected = np.linalg.norm(tensor - tl.cp_to_tensor(cp)) / np.linalg.norm(tensor)
    assert relative_error(tensor, cp) == pytest.approx(expected, rel=1e-12)
    assert relative_error(np.zeros((5, 4, 3)), cp) == float("inf")


# ---------------------------------------------------------------- cp_als

def test_cp_als_follows_the_same_conventions():
    tensor = np.random.default_rng(16).standard_normal((8, 6, 3, 3)).astype(np.float32)
    states = []
    cp = cp_als(tensor, 5, max_iter=30, tol=0, random_state=0, callback=record(states))
    assert [s.iteration for s in states] == list(range(31))
    assert all(isinstance(s, SolverState) for s in states)
    errors = [s.rel_error for s in states[1:]]  # ALS is monotone after its first sweep
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errors, errors[1:]))
    assert cp.weights.dtype == np.float32 and np.all(np.diff(cp.weights) <= 0)
    for f in cp.factors:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, rtol=1e-5)
    assert relative_error(tensor, cp) == pytest.approx(states[-1].rel_error, rel=1e-3, abs=1e-6)


def test_cp_als_callback_returning_true_stops():
    tensor = np.random.default_rng(17).standard_normal((6, 5, 3))
    states = []

    def stop_at_two(state):
        states.append(state)
        return state.iteration == 2

    cp_als(tensor, 3, max_iter=50, tol=0, callback=stop_at_two)
    assert [s.iteration for s in states] == [0, 1, 2]


def test_cp_als_warm_start_and_zero_tensor():
    tensor = low_rank_tensor((6, 5, 4), 2, seed=18)
    start = cp_nls(tensor, 2, max_iter=3, random_state=0)
    cp = cp_als(tensor, 2, init=start, max_iter=200)
    assert relative_error(tensor, cp) < relative_error(tensor, start)
    zero = cp_als(np.zeros((3, 3, 3)), 2)
    assert all(np.all(f == 0) for f in zero.factors)


def test_solver_limits_dense_gauss_newton_matches_the_operator():
    # tools/solver_limits.py counts exact Levenberg-Marquardt iterations with a dense J^T J;
    # it must be the matrix the solver's operator applies.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from solver_limits import dense_gauss_newton, exact_lm_iterations

    from onnx_cp.solver._kernels import GaussNewtonOperator, gramians

    rng = np.random.default_rng(7)
    factors = [rng.standard_normal((s, 3)) for s in (4, 3, 2, 5)]
    op = GaussNewtonOperator(factors)
    x = rng.standard_normal(op.offsets[-1])
    np.testing.assert_allclose(dense_gauss_newton(factors, gramians(factors)) @ x,
                               op.apply(x, np.empty_like(x), 0.0), rtol=1e-12, atol=1e-12)
    exact = tl.cp_to_tensor((None, [rng.standard_normal((s, 3)) for s in (6, 5, 3, 3)]))
    iterations, err = exact_lm_iterations(exact, 3, 1e-6, 200)
    assert iterations is not None and err <= 1e-6

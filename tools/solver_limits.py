"""Why cp_nls misses the 20x target on some kernels of tools/bench_solver.py: the measurements.

``swamp``: for each kernel, the error of 200 tensorly ALS sweeps from its SVD start (the
benchmark's target) and

* the number of cp_nls moves (sweeps and Gauss-Newton steps) to reach it, seed 0;
* the number of exact Levenberg-Marquardt iterations from the same start (J^T J formed and
  factored, every step solved exactly): how many iterations the error surface itself asks
  for, whatever the step;
* the time of the two products with the whole tensor that every move needs (median of 50,
  one BLAS thread), times the move count: the least time any implementation of those moves
  could take, against the 1/20 of ALS's time that the target allows.

``starts``: cp_nls on the decaying AlexNet-shaped kernel at rank 64 from seeds 0 to 5, SVD and
random starts: the spread of the local minima it converges to, against ALS's 200-sweep errors.

    python tools/solver_limits.py swamp     # the two rank-32 charcnn kernels, about 15 minutes
    python tools/solver_limits.py swamp --kernel features.6 --exact-max-iter 100
    python tools/solver_limits.py starts    # about 1 minute
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import CHARCNN, alexnet_like_kernels, blas_limit, onnx_conv_kernels, run_als  # noqa: E402

from onnx_cp.solver import (GaussNewtonOperator, Matricization, Objective, balance, cp_nls,  # noqa: E402
                            hadamard_except, initial_factors, relative_error)

ALS_SWEEPS = 200
SWAMP_KERNELS = ("/features/features.6/Conv", "/features/features.3/Conv")


def dense_gauss_newton(factors: list[np.ndarray], grams: list[np.ndarray]) -> np.ndarray:
    """J^T J of the CP model as a dense matrix (the blocks GaussNewtonOperator applies)."""
    rank = factors[0].shape[1]
    sizes = [u.shape[0] for u in factors]
    offsets = np.concatenate([[0], np.cumsum([s * rank for s in sizes])])
    out = np.zeros((offsets[-1], offsets[-1]))
    for a, ua in enumerate(factors):
        for b, ub in enumerate(factors):
            rows, cols = slice(offsets[a], offsets[a + 1]), slice(offsets[b], offsets[b + 1])
            if a == b:
                out[rows, cols] = np.kron(np.eye(sizes[a]), hadamard_except(grams, {a}))
            else:
                block = np.einsum("is,jr,rs->irjs", ua, ub, hadamard_except(grams, {a, b}))
                out[rows, cols] = block.reshape(sizes[a] * rank, sizes[b] * rank)
    return out


def exact_lm_iterations(kernel: np.ndarray, rank: int, target: float, max_iter: int) -> tuple[int | None, float]:
    """Exact Levenberg-Marquardt (Nielsen damping) from cp_nls's seed-0 SVD start: the
    iterations to reach ``target`` (None if not within ``max_iter``) and the last error."""
    t = kernel / np.linalg.norm(kernel)
    mat = Matricization(t.shape)
    objective = Objective(mat.matrix(t), mat)
    point = objective.evaluate(initial_factors(t, mat, rank, "svd", np.random.default_rng(0), 1.0))
    damping, growth = None, 2.0
    err = math.sqrt(2 * point.f)
    for iteration in range(1, max_iter + 1):
        op = GaussNewtonOperator(point.factors, point.grams)
        grad = objective.gradient(point, op.gamma)
        jtj = dense_gauss_newton(point.factors, point.grams)
        damping = 1e-3 * np.max(np.diag(jtj)) if damping is None else damping
        while True:
            step = scipy.linalg.solve(jtj + damping * np.eye(len(jtj)), -grad, assume_a="pos")
            trial = objective.evaluate([u + s for u, s in zip(point.factors, op.blocks(step))])
            if trial.f < point.f:
                predicted = -(grad @ step) - 0.5 * step @ (jtj @ step)
                damping *= max(1 / 3, 1 - (2 * (point.f - trial.f) / predicted - 1) ** 3)
                growth = 2.0
                point = objective.evaluate(balance(trial.factors))
                break
            damping *= growth
            growth *= 2.0
        err = math.sqrt(2 * point.f)
        print(f"      exact LM iteration {iteration}: {err:.5f}", end="\r", flush=True)
        if err <= target:
            print()
            return iteration, err
    print()
    return None, err


def product_time(kernel: np.ndarray, rank: int, repeats: int = 50) -> float:
    """Median seconds of ``T2 @ KR_right`` plus ``T2^T @ KR_left`` at ``rank``, one BLAS thread."""
    mat = Matricization(kernel.shape)
    t2 = mat.matrix(kernel)
    rng = np.random.default_rng(0)
    factors = [rng.standard_normal((s, rank)) for s in kernel.shape]
    krl, krr = mat.kr_left(factors), mat.kr_right(factors)
    times = []
    with blas_limit(1):
        for _ in range(repeats + 5):
            start = time.perf_counter()
            t2 @ krr
            t2.T @ krl
            times.append(time.perf_counter() - start)
    return float(np.median(times[5:]))


def swamp(args) -> None:
    kernels = dict(onnx_conv_kernels(CHARCNN))
    names = [n for n in kernels if any(n.endswith(k) for k in SWAMP_KERNELS)]
    if args.kernel:
        names = [n for n in names if args.kernel in n] or [n for n in kernels if args.kernel in n]
    for name in names:
        kernel = kernels[name]
        print(f"{name} {'x'.join(map(str, kernel.shape))} rank {args.rank}", flush=True)
        _, als = run_als(kernel, args.rank, "svd", ALS_SWEEPS, 1)
        target, als_time = als.errors[-1], als.times[-1]
        print(f"  tensorly ALS, SVD start: {target:.5f} after {ALS_SWEEPS} sweeps in {als_time:.2f} s; "
              f"20x allows {1e3 * als_time / 20:.0f} ms")
        reached = []

        def stop(state):
            if state.rel_error <= target:
                reached.append((state.iteration, state.elapsed))
                return True
            return None

        cp_nls(kernel, args.rank, random_state=0, max_iter=10**6, max_time=als_time, callback=stop)
        if reached:
            moves, elapsed = reached[0]
            print(f"  cp_nls (seed 0): {moves} moves, {1e3 * elapsed:.0f} ms ({als_time / elapsed:.1f}x)")
        else:
            moves = None
            print("  cp_nls (seed 0): did not reach it within ALS's time")
        floor = product_time(kernel, args.rank)
        line = f"  two products per move: {1e3 * floor:.2f} ms"
        if moves:
            line += f"; x {moves} moves = {1e3 * floor * moves:.0f} ms of products alone"
        print(line)
        iterations, err = exact_lm_iterations(kernel, args.rank, target, args.exact_max_iter)
        print("  exact Levenberg-Marquardt from the same start: "
              + (f"{iterations} iterations" if iterations else
                 f"not reached after {args.exact_max_iter} iterations ({err:.5f})"), flush=True)


def starts(args) -> None:
    kernel = dict(alexnet_like_kernels())["alexnet-conv2-shape decaying"]
    for init in ("svd", "random"):
        _, als = run_als(kernel, args.rank, init, ALS_SWEEPS, 1)
        print(f"tensorly ALS, {init} start: {als.errors[-1]:.5f} after {ALS_SWEEPS} sweeps, {als.times[-1]:.1f} s")
    errors = []
    for seed in range(args.seeds):
        for init in ("svd", "random"):
            start = time.perf_counter()
            cp = cp_nls(kernel, args.rank, init=init, random_state=seed, max_iter=10**6)
            elapsed = time.perf_counter() - start
            errors.append(relative_error(kernel, cp))
            print(f"cp_nls seed {seed} {init:6s}: {errors[-1]:.5f} (converged in {elapsed:.2f} s)", flush=True)
    print(f"cp_nls minima: {min(errors):.5f} to {max(errors):.5f} over {len(errors)} starts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("swamp", help="moves, exact-LM iterations and product floor on the charcnn kernels")
    p.add_argument("--kernel", help="substring of a charcnn36 Conv name (default: features.6 and features.3)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--exact-max-iter", type=int, default=200)
    p = sub.add_parser("starts", help="local minima of the decaying AlexNet-shaped kernel over seeds")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args(argv)
    if args.command == "swamp" and not CHARCNN.exists():
        parser.error(f"{CHARCNN} is missing; it ships with the repository (tools/reproduce_lebedev.py makes it)")
    {"swamp": swamp, "starts": starts}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

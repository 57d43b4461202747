"""Output error on held-out inputs of a rewrite without and with --calib (issue 16's nudenet check).

    python tools/calib_output_error.py assets/nudenet_320n.onnx --input-shape images=1x3x320x320 \
        --rank 0.25 --calib-count 64 --held-out 16

Without real photos at hand, the inputs are synthetic "blocky" images: seeded uniform noise at
1/16 of the resolution, upsampled, plus fine noise (smooth regions and edges, unlike white
noise). The calibration set (seed 0) and the held-out set (seed 1) never share an image. Both
rewrites use the same rank and forms (--realize cp4, so timing noise cannot change the layers);
the figure is ||f_cp(x) - f(x)|| / ||f(x)|| over every float output of the held-out images.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx_cp import RewriteConfig, rewrite_with_report
from onnx_cp.model_io import load_model
from onnx_cp.ranks.proxy import output_error, run
from onnx_cp.shapes import parse_input_shapes


def blocky(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``count`` images of ``shape`` (1, C, H, W) in [0, 1]: coarse noise upsampled, plus fine noise."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    coarse = rng.uniform(0, 1, (count, c, max(1, h // 16), max(1, w // 16)))
    big = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)[:, :, :h, :w]
    big = np.pad(big, ((0, 0), (0, 0), (0, h - big.shape[2]), (0, w - big.shape[3])), mode="edge")
    return np.clip(big + rng.normal(0, 0.05, big.shape), 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--input-shape", required=True, help="NAME=1xCxHxW")
    parser.add_argument("--rank", default="0.25")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    args = parser.parse_args()
    shapes = parse_input_shapes([args.input_shape])
    (name, shape), = shapes.items()
    model = load_model(args.model)
    held = blocky(args.held_out, shape, seed=1)
    feeds = [{name: held[i:i + 1]} for i in range(len(held))]
    reference = run(model, feeds)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npy"
        np.save(calib, blocky(args.calib_count, shape, seed=0))
        for label, extra in (("without --calib", {}), ("with --calib", {"calib": str(calib)})):
            start = time.perf_counter()
            result = rewrite_with_report(model, RewriteConfig(ranks=(args.rank,), realize="cp4", input_shapes=shapes,
                                                              measure=False, **extra))
            seconds = time.perf_counter() - start
            error = output_error(run(result.model, feeds), reference)
            print(f"{label}: {len(result.report.rewritten)} layers rewritten, held-out output error {error:.4f} "
                  f"({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

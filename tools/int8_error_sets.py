"""Written INT8 models' output error on more inputs than the rewrite's held-back ones, beside INT8 alone's.

    python tools/int8_error_sets.py assets/vgg16_240.onnx v.onnx v2.onnx --calib vgg_calib.npy --fresh 64

The rewrite's report measures each model's error on the inputs it held back (16 of 80 in the
VGG-16 runs of docs/results/int8.md), and a 4-class softmax over 16 inputs moves a lot with a few
of them. This tool measures INT8 alone (``quantize_int8`` of the original, calibrated on the first
``--calib-count`` inputs of ``--calib``, as the quantize stage does) and each given model against
the original on three sets: the held-back inputs (``--calib`` after the first ``--calib-count``),
the first 32 calibration inputs, and ``--fresh`` smooth images the rewrite never saw (seed
``--seed``, drawn as tools/bench_int8.py draws them). Each model's error is printed with its ratio
to INT8 alone's on the same set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_int8 import smooth_images  # noqa: E402
from onnx_cp.machine import describe_machine  # noqa: E402
from onnx_cp.model_io import load_model  # noqa: E402
from onnx_cp.quantize import int8_error, quantize_int8  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help="written models to measure")
    parser.add_argument("--calib", type=Path, required=True, help=".npy of inputs, batch 1 each")
    parser.add_argument("--calib-count", type=int, default=64, help="inputs INT8 alone is calibrated on")
    parser.add_argument("--fresh", type=int, default=64, help="smooth images the rewrite never saw")
    parser.add_argument("--seed", type=int, default=1, help="their seed (vgg_calib.npy's is 0)")
    args = parser.parse_args(argv)

    original = load_model(args.original)
    x = np.load(args.calib).astype(np.float32)
    calib = x[:args.calib_count]
    shape = (1, *x.shape[-3:])  # one image: smooth_images reads its layout (NHWC or NCHW) from it
    sets = {f"held back ({len(x) - args.calib_count})": x[args.calib_count:],
            "first 32 calibration": calib[:32],
            f"fresh ({args.fresh}, seed {args.seed})": smooth_images(args.fresh, shape, args.seed)}
    alone = quantize_int8(original, calib)
    base = {name: int8_error(original, alone, inputs) for name, inputs in sets.items()}
    print(f"machine: {describe_machine().label}")
    print("| model | " + " | ".join(sets) + " |")
    print("|---" * (len(sets) + 1) + "|")
    print("| INT8 alone | " + " | ".join(f"{base[n]:.4f}" for n in sets) + " |")
    for path in args.models:
        model = load_model(path)
        errors = {name: int8_error(original, model, inputs) for name, inputs in sets.items()}
        print(f"| {path.name} | " + " | ".join(f"{errors[n]:.4f} ({errors[n] / base[n]:.2f}x)" for n in sets) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

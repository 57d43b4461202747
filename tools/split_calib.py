"""Split a labelled test set into unlabeled calibration inputs and the held-out rest.

    python tools/split_calib.py models/mnist_test.npz --count 512 --calib /tmp/cal/mnist_calib.npy \
        --rest /tmp/cal/mnist_rest.npz

The first COUNT samples' ``x`` (no labels) go to CALIB (.npy) for `onnx-cp rewrite --calib`; the
other samples, with their labels, go to REST (.npz) for `onnx-cp evaluate`, so accuracy is
never measured on an input the rewrite saw.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help=".npz with x and y")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--calib", required=True, help="where to write the calibration .npy")
    parser.add_argument("--rest", required=True, help="where to write the held-out .npz")
    args = parser.parse_args()
    data = np.load(args.data)
    x, y = data["x"], data["y"]
    if not 0 < args.count < len(x):
        parser.error(f"--count must lie in (0, {len(x)}), got {args.count}")
    for path in (args.calib, args.rest):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.calib, x[:args.count])
    np.savez(args.rest, x=x[args.count:], y=y[args.count:])
    print(f"{args.calib}: {args.count} inputs; {args.rest}: {len(x) - args.count} labelled samples")


if __name__ == "__main__":
    main()

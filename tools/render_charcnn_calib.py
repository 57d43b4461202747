"""Unlabeled calibration crops for models/charcnn36.onnx, rendered in the training fonts only.

    python tools/render_charcnn_calib.py --count 8192 --seed 20261129 -o /tmp/cal/char_calib_train8k.npy

The held-out test fonts are never drawn and the labels are thrown away: what `onnx-cp rewrite
--calib` gets is what a user without the training pipeline has, a pile of unlabeled inputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from charcnn.render import TRAIN_FONTS, render  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("-o", "--output", required=True, help="the .npy to write (N x 1 x 24 x 24 float16)")
    args = parser.parse_args()
    x, _ = render(args.count, seed=args.seed, fonts=TRAIN_FONTS)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, x.astype(np.float16))  # half the size; --calib reads any float type
    print(f"{args.output}: {len(x)} unlabeled crops in the training fonts")


if __name__ == "__main__":
    main()

"""Recovery's learning rate on one layer: charcnn36's features.3 at a fixed rank, recovered with
a given base rate, scored on held-out crops (no labels used by the rewrite).

    python tools/split_calib.py models/charcnn36_test.npz --count 512 --calib /tmp/cal/char_calib.npy --rest /tmp/cal/char_rest.npz
    python tools/render_charcnn_calib.py -o /tmp/cal/char_calib_train8k.npy
    python tools/recovery_lr.py 1e-2 5e-3 2e-3 [--rank 48]

The base rate is used as given (``rank_scaled_lr`` is bypassed), so the rates compare directly.
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

from onnx_cp.config import RewriteConfig
from onnx_cp.evaluate import evaluate, load_dataset
from onnx_cp.rewrite import rewrite_with_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rates", type=float, nargs="+")
    parser.add_argument("--rank", type=int, default=48)
    parser.add_argument("--calib", default="/tmp/cal/char_calib_train8k.npy")
    parser.add_argument("--rest", default="/tmp/cal/char_rest.npz")
    args = parser.parse_args()
    x, y = load_dataset(args.rest)
    for lr in args.rates:
        start = time.perf_counter()
        config = RewriteConfig(ranks=(f"*features.3*={args.rank}",), layers=("*features.3*",), realize="cp4", jobs=1,
                               measure=False, calib=args.calib, calib_samples=8192, recover_steps=2000,
                               recover_time=600, input_shapes={"input": (64, 1, 24, 24)})
        with mock.patch("onnx_cp.calibrate.layerwise.rank_scaled_lr", lambda base, rank: lr):
            result = rewrite_with_report("models/charcnn36.onnx", config)
        print(f"lr {lr:g}: top-1 {evaluate(result.model, x, y).top1:.2%}, "
              f"model output error {result.report.calibration['output_error']:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

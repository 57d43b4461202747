"""A node left float in a static INT8 model, by onnxruntime's optimization level: its output error
against the float model, beside every node in int8.

    python tools/int8_float_neighbour.py assets/vgg16_240.onnx --calib vgg_calib.npy \\
        --node functional_1/block3_conv2_1/BiasAdd --count 32

Calibrates on the first ``--calib-samples`` inputs of ``--calib`` (``quantize_int8``, as the
quantize stage does), then measures the relative L2 error over every float output on the first
``--count`` of them, the reference being the float model run with optimizations off. The last row
runs level basic without onnxruntime's ``WeightBiasQuantization`` rewrite, which quantizes a float
Conv/Gemm read from a per-tensor DequantizeLinear to per-tensor int8; ``quantize_int8`` keeps the
node out of its reach (onnx_cp/quantize/keep_float.py), so that row is the control: the node's
figure there should be the one at level basic (docs/results/int8.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_cp.calibrate.activations import output_error  # noqa: E402
from onnx_cp.machine import describe_machine  # noqa: E402
from onnx_cp.model_io import load_model  # noqa: E402
from onnx_cp.quantize import quantize_int8  # noqa: E402

LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def outputs(model, x: np.ndarray, level, disabled: list[str] | None = None) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x[i:i + 1]}) for i in range(len(x))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--calib", type=Path, required=True, help=".npy of inputs, batch 1 each")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--node", required=True, help="the node left float")
    parser.add_argument("--count", type=int, default=32, help="inputs the error is measured on")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    x = np.load(args.calib).astype(np.float32)
    calib, measured = x[:args.calib_samples], x[:args.count]
    every = quantize_int8(model, calib)
    left = quantize_int8(model, calib, nodes_to_exclude=[args.node])
    reference = outputs(model, measured, LEVELS["disabled"])
    print(f"{args.model}: {args.node} left float; {len(calib)} calibration inputs, error on the first {len(measured)}")
    print(f"machine: {describe_machine().label}")
    print("| level | every node int8 | the node float |")
    print("|---|---|---|")
    for label, level in LEVELS.items():
        errors = [output_error(outputs(m, measured, level), reference) for m in (every, left)]
        print(f"| {label} | {errors[0]:.4f} | {errors[1]:.4f} |")
    errors = [output_error(outputs(m, measured, LEVELS["basic"], ["WeightBiasQuantization"]), reference)
              for m in (every, left)]
    print(f"| basic without WeightBiasQuantization | {errors[0]:.4f} | {errors[1]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

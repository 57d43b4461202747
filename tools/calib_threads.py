"""Two timings behind the --max-drop search's costs on one model, in one run:

1. a calibration pass (the prefix a recovered layer reads its inputs from) at 1 thread and at every
   core, as ``Calibration.passes`` runs it;
2. the model profiled (onnxruntime's per-node profiler, as the latency probe times it) against
   the same model timed plainly: the profiled runs are slower, so the time no layer can save,
   taken as the plain time less the profiled layers', comes out too small.

    python tools/calib_threads.py assets/captcha_whisperer_crnn.onnx --input-shape image=1x3x60x160 \\
        --calib out/ocr/whisperer/calib.npy --tensor /Relu_20_output_0
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--input-shape", required=True, help="NAME=1x3x60x160")
    parser.add_argument("--calib", required=True, help=".npy of inputs")
    parser.add_argument("--tensor", required=True, help="the tensor a pass reads (a layer's input)")
    parser.add_argument("--samples", type=int, default=410)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from onnx_cp.bench import measure_latency, profile_outputs
    from onnx_cp.calibrate.activations import stream
    from onnx_cp.machine import describe_machine

    name, dims = args.input_shape.split("=")
    shapes = {name: tuple(int(d) for d in dims.split("x"))}
    model = onnx.load(args.model)
    x = np.load(args.calib)[:args.samples]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(describe_machine().label, "Python", platform.python_version())
    for _ in range(args.repeats):
        for threads in (1, cores):
            begin = time.perf_counter()
            for _ in stream(model, [args.tensor], x, threads=threads):
                pass
            print(f"pass over {len(x)} samples to {args.tensor}: {time.perf_counter() - begin:.2f} s at {threads} thread(s)")
    for _ in range(args.repeats):
        (profiled, layers), = profile_outputs([model], threads=1, warmup=5, runs=args.runs, input_shapes=shapes)
        plain, = measure_latency([model], threads=1, warmup=5, runs=args.runs, input_shapes=shapes)
        print(f"profiled {profiled:.2f} ms (its layers' sum {sum(layers.values()):.2f} ms), plain {plain.median:.2f} ms, "
              f"{args.runs} runs, 1 thread")


if __name__ == "__main__":
    main()

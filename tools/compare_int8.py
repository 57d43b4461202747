"""float32 vs INT8 vs CP vs CP + INT8 in onnxruntime's CPU execution provider, in one run.

    python tools/compare_int8.py models/mnist_cnn.onnx --cp mnist_cp.onnx \\
        --data models/mnist_test.npz
    python tools/compare_int8.py assets/nudenet_320n.onnx --cp nudenet_cp.onnx \\
        --input-shape images=1x3x320x320

INT8 is onnxruntime's static quantization in QDQ format (per-channel int8 weights, uint8
activations, MinMax calibration; ``onnx_cp.quantize.quantize_int8``, every node in int8) of the
float32 model and of the CP model, calibrated on the first ``--calib-count`` images of ``--data``
(random inputs when no data is given). tools/bench_int8.py runs the rewrite itself and keeps
int8 only where it measured faster. All four
models are timed in alternation (onnx_cp.bench.measure_latency), so drift hits them alike.
Beside each: top-1 accuracy on ``--data`` when it has labels, and always the agreement with
the float32 original on the evaluation inputs: the share of equal top-1 predictions (for
N x classes outputs) and the relative difference of the first output.

Prints a Markdown table; ``--out FILE`` also writes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from onnx_cp.bench import measure_latency  # noqa: E402
from onnx_cp.evaluate import load_dataset  # noqa: E402
from onnx_cp.graph import runtime_inputs  # noqa: E402
from onnx_cp.quantize import quantize_int8  # noqa: E402
from onnx_cp.runtime import open_session, session_options  # noqa: E402
from onnx_cp.shapes import parse_input_shapes  # noqa: E402


def first_output(model: onnx.ModelProto, name: str, x: np.ndarray, threads: int) -> np.ndarray:
    """The model's first output for every input, run one at a time (any output shape)."""
    session = open_session(model, session_options(threads=threads))
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float | None, float]:
    """(share of equal argmax predictions for N x classes outputs, else None;
    ||other - reference|| / ||reference||)."""
    ref2, oth2 = reference.reshape(len(reference), -1), other.reshape(len(other), -1)
    same = float(np.mean(ref2.argmax(1) == oth2.argmax(1))) if reference.ndim == 2 else None
    return same, float(np.linalg.norm(oth2 - ref2) / np.linalg.norm(ref2))


def inputs(args, model: onnx.ModelProto) -> tuple[str, np.ndarray, np.ndarray | None]:
    name = runtime_inputs(model.graph)[0].name
    if args.data is not None:
        x, y = load_dataset(args.data)
        return name, x[:args.eval_count], None if y is None else y[:args.eval_count]
    shapes = parse_input_shapes(args.input_shape)
    if name not in shapes:
        sys.exit(f"error: without --data, give the input shape: --input-shape {name}=1x3x224x224")
    shape = shapes[name]
    rng = np.random.default_rng(0)
    x = rng.random((args.eval_count, *shape[1:]), dtype=np.float32)
    return name, x, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the float32 original")
    parser.add_argument("--cp", type=Path, required=True, help="its onnx-cp rewrite")
    parser.add_argument("--data", type=Path, help=".npz with x (and y for accuracy)")
    parser.add_argument("--input-shape", action="append", default=[], help="NAME=1x3x224x224 without --data")
    parser.add_argument("--calib-count", type=int, default=200)
    parser.add_argument("--eval-count", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    original = onnx.load(str(args.model))
    name, x, y = inputs(args, original)
    calib = x[:args.calib_count]
    shapes = {name: (1, *x.shape[1:])}
    cp = onnx.load(str(args.cp))
    models = {"float32": original, "INT8": quantize_int8(original, calib), "CP": cp,
              "CP + INT8": quantize_int8(cp, calib)}
    print("timing ...", flush=True)
    stats = measure_latency(list(models.values()), threads=args.threads, runs=args.runs, warmup=20,
                            input_shapes=shapes)
    outputs = {label: first_output(model, name, x, args.threads) for label, model in models.items()}

    reference = outputs["float32"]
    base = stats[0].median
    header = ["model", "latency ms (median)", "speed-up", "top-1 agreement with float32",
              "output rel. difference"]
    if y is not None:
        header.insert(3, "top-1 accuracy")
    rows = []
    for (label, out), st in zip(outputs.items(), stats):
        same, diff = agreement(reference, out)
        row = [label, f"{st.median:.3f}", f"{base / st.median:.2f}x", "-" if same is None else f"{same:.2%}",
               f"{diff:.4f}"]
        if y is not None:
            row.insert(3, f"{float(np.mean(out.reshape(len(out), -1).argmax(1) == y)):.2%}")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    settings = (f"{args.threads} thread(s), batch 1, {args.runs} alternated runs per model; "
                f"{len(x)} evaluation inputs, {len(calib)} calibration inputs")
    print(table + "\n\n" + settings)
    if args.out is not None:
        args.out.write_text(table + "\n\n" + settings + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

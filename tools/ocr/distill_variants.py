"""Whole-model distillation variants on one rewritten recognizer, scored by held-back output error
and exact-string accuracy (what docs/results/calibration.md compares the --calib stage's choices by).

    onnx-cp rewrite assets/ddddocr_common.onnx --rank 0.25 --calib out/ocr/ddddocr/calib.npy \\
        --input-shape input1=1x1x64x170 --distill-epochs 0 -o ddr.onnx
    python -m tools.ocr.distill_variants assets/ddddocr_common.onnx ddr.onnx out/ocr/ddddocr/calib.npy \\
        out/ocr/ddddocr/lines.npz --variant layers --variant all --variant shift --variant kl

The calibration file is split as the rewrite splits it (the last fifth held back). Variants:
- ``layers``: the stage as built: the rewritten layers' weights, normalized squared error;
- ``all``: every weight of the model trains;
- ``shift``: the training lines three times, as drawn and rolled 3 pixels left and right;
- ``noise``: the training lines twice, as drawn and with Gaussian noise of 5% of their spread;
- ``kl``: KL divergence along the class axis at temperature 4 in place of the squared error;
- ``kl1``: the same at temperature 1.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnx_cp.calibrate.activations import batched_outputs, output_error
from onnx_cp.calibrate.distill import BATCH, LEARNING_RATE, _all_cores, transplant
from onnx_cp.finetune import finetune_with_report

from .ctc import scores
from .exact_metric import read

VARIANTS = ("layers", "all", "shift", "noise", "kl", "kl1")


def training_set(x: np.ndarray, variant: str, seed: int) -> np.ndarray:
    if variant == "shift":
        x = np.concatenate([x, np.roll(x, 3, axis=-1), np.roll(x, -3, axis=-1)])
    elif variant == "noise":
        noise = np.random.default_rng(seed).normal(0, 0.05 * x.std(), x.shape).astype(np.float32)
        x = np.concatenate([x, x + noise])
    return x[np.random.default_rng(seed).permutation(len(x))]


def distill(teacher: onnx.ModelProto, student: onnx.ModelProto, x: np.ndarray, variant: str, epochs: int,
            seed: int) -> onnx.ModelProto:
    data = training_set(x, variant, seed)
    # the rewritten layers: the student's nodes the teacher does not have
    nodes = None if variant == "all" else {n.name for n in student.graph.node} - {n.name for n in teacher.graph.node}
    kl = variant.startswith("kl")
    with _all_cores():
        tuned = finetune_with_report(student, [data[i:i + BATCH] for i in range(0, len(data), BATCH)],
                                     teacher=teacher, epochs=epochs, lr=LEARNING_RATE, seed=seed, device="cpu",
                                     class_axes=() if kl else {"*": None}, temperature=1.0 if variant == "kl1" else 4.0,
                                     train_only=nodes)
    return transplant(student, {t.name: numpy_helper.to_array(t) for t in tuned.model.graph.initializer})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("student", help="the rewrite with --distill-epochs 0")
    parser.add_argument("calib", help="the --calib file the rewrite used")
    parser.add_argument("lines", help="labelled lines (tools/make_ocr_data.py)")
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    teacher, student = onnx.load(args.teacher), onnx.load(args.student)
    x = np.load(args.calib).astype(np.float32)
    train = len(x) - max(int(round(len(x) * 0.2)), 1)
    reference = batched_outputs(teacher, x[train:])
    lines = dict(np.load(args.lines, allow_pickle=True))
    print(f"recovered: held-back error {output_error(batched_outputs(student, x[train:]), reference):.4f}")
    for variant in args.variant or ["layers"]:
        begin = time.perf_counter()
        tuned = distill(teacher, student, x[:train], variant, args.epochs, args.seed)
        seconds = time.perf_counter() - begin
        error = output_error(batched_outputs(tuned, x[train:]), reference)
        path = f"{args.student.removesuffix('.onnx')}_{variant}.onnx"
        onnx.save(tuned, path)
        exact, characters = scores(*read(path, lines))
        print(f"{variant}: {seconds:.0f} s, held-back error {error:.4f}, exact {exact:.2%}, characters "
              f"{characters:.2%} ({path})", flush=True)


if __name__ == "__main__":
    main()

"""Original, INT8 alone, low-rank alone and low-rank + INT8, timed in one alternated run.

    python tools/bench_int8.py models/mnist_cnn.onnx --data models/mnist_test.npz --rank 8
    python tools/render_charcnn_calib.py --count 1024 -o /tmp/char_calib.npy
    python tools/bench_int8.py models/charcnn36.onnx --calib-data /tmp/char_calib.npy --calib-count 512 \\
        --data models/charcnn36_test.npz --input-shape input=64x1x24x24 --target-speedup 5 --rewrite-calib
    python tools/bench_int8.py assets/vgg16_240.onnx --smooth-images 80 --calib-count 64 \\
        --input-shape input=1x240x240x3 --target-speedup 3

- INT8 alone: every Conv, Gemm and MatMul of the original quantized (``quantize_int8``), what a
  deployment engineer gets from onnxruntime's static quantization;
- low-rank alone: ``onnx_cp.rewrite_with_report`` with ``--rank`` or ``--target-speedup``;
- low-rank + INT8: that rewrite with each node in int8 where it measured faster
  (``quantize_fastest``; the float rewrite itself when INT8 does not pay).

Calibration takes the first ``--calib-count`` inputs (of ``--calib-data`` when given, so that
``--data`` is all held back); the next ``--held-back`` ones measure each model's output error
against the original (relative L2 over every float output) and, with labels, top-1 accuracy.
``--rewrite-calib`` gives the rewrite the calibration inputs too (its data-aware fits).
``--smooth-images N`` draws N smooth grayscale images in [0, 1] (low-frequency random fields,
three equal channels) for models that ship without data. Prints a Markdown table with the CPU,
its ISA, onnxruntime's version, the load average and the date; ``--out`` also writes the
figures as JSON, ``--keep DIR`` the three derived models.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report, save_model  # noqa: E402
from onnx_cp import runtime  # noqa: E402
from onnx_cp.bench import measure_latency  # noqa: E402
from onnx_cp.evaluate import load_dataset  # noqa: E402
from onnx_cp.quantize import int8_error, onnxruntime_timing, quantize_fastest, quantize_int8  # noqa: E402

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu() -> str:
    """The CPU's model name and the instruction sets that matter to int8 kernels."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return f"{fields.get('model name', 'unknown CPU')} ({', '.join(f for f in ISA_FLAGS if f in flags) or 'no AVX2'})"


def smooth_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``count`` images of ``shape`` (NHWC or NCHW, 3 or 1 channels): bilinear upsampling of a
    coarse random grid, the same in every channel, in [0, 1]."""
    rng = np.random.default_rng(seed)
    channels_last = shape[-1] in (1, 3)
    h, w = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    coarse = rng.random((count, 9, 9))
    rows, cols = np.linspace(0, 8, h), np.linspace(0, 8, w)
    r0, c0 = np.minimum(rows.astype(int), 7), np.minimum(cols.astype(int), 7)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    grid = (coarse[:, r0][:, :, c0] * (1 - fr) * (1 - fc) + coarse[:, r0 + 1][:, :, c0] * fr * (1 - fc)
            + coarse[:, r0][:, :, c0 + 1] * (1 - fr) * fc + coarse[:, r0 + 1][:, :, c0 + 1] * fr * fc)
    grid = np.clip(grid + 0.02 * rng.standard_normal(grid.shape), 0.0, 1.0).astype(np.float32)
    channels = shape[-1] if channels_last else shape[1]
    return np.repeat(grid[..., None] if channels_last else grid[:, None], channels, axis=-1 if channels_last else 1)


def inputs(args, model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray | None]:
    if args.data is not None:
        x, y = load_dataset(args.data)
        return x.astype(np.float32), y
    if args.smooth_images is None or not args.input_shape:
        sys.exit("error: give --data, or --smooth-images N with --input-shape NAME=1x...")
    return smooth_images(args.smooth_images, args.shape, args.seed), None


def rewrite_config(args, calib_path: str | None) -> RewriteConfig:
    selection = RankSelection(target_speedup=args.target_speedup) if args.target_speedup else None
    ranks = (args.rank,) if args.rank else ()
    return RewriteConfig(ranks=ranks, selection=selection, threads=args.threads, opt_level=args.opt_level,
                         input_shapes=args.shapes, calib=calib_path)


def top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    session = runtime.open_session(model, runtime.session_options(threads=1, quiet=True))
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return float(np.mean(logits.reshape(len(x), -1).argmax(1) == y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, help=".npz (x, optional y) or .npy of inputs")
    parser.add_argument("--smooth-images", type=int, help="without --data: draw this many smooth images")
    parser.add_argument("--input-shape", help="NAME=1x3x224x224: the shape timed (and drawn)")
    parser.add_argument("--calib-data", type=Path, help="calibration inputs apart from --data (.npy or .npz)")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--held-back", type=int, default=256)
    parser.add_argument("--rank", help="the low-rank rewrite's --rank (8, 0.25, ...)")
    parser.add_argument("--target-speedup", type=float, help="the low-rank rewrite's --target-speedup")
    parser.add_argument("--rewrite-calib", action="store_true", help="the rewrite fits on the calibration inputs too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opt-level", default="all")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    parser.add_argument("--keep", type=Path, help="write the three derived models into this folder")
    args = parser.parse_args(argv)
    if bool(args.rank) == bool(args.target_speedup):
        parser.error("give exactly one of --rank and --target-speedup")
    model = onnx.load(str(args.model))
    name = model.graph.input[0].name
    args.shape = None
    if args.input_shape:
        given, _, dims = args.input_shape.partition("=")
        if given != name:
            parser.error(f"--input-shape names {given!r}; the model's input is {name!r}")
        args.shape = tuple(int(d) for d in dims.split("x"))
    x, y = inputs(args, model)
    args.shapes = {name: args.shape or (1, *x.shape[1:])}
    first = 0 if args.calib_data else args.calib_count
    calib = (load_dataset(args.calib_data)[0].astype(np.float32) if args.calib_data else x)[:args.calib_count]
    held = x[first:first + args.held_back]
    labels = None if y is None else y[first:first + len(held)]
    if not len(held):
        parser.error(f"{len(x)} inputs leave none held back after --calib-count {args.calib_count}")
    load_before, started = os.getloadavg(), time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        calib_path = None
        if args.rewrite_calib:
            calib_path = str(Path(tmp) / "calib.npy")
            np.save(calib_path, calib)
        print("INT8 alone ...", flush=True)
        int8 = quantize_int8(model, calib)
        print("low-rank rewrite ...", flush=True)
        start = time.perf_counter()
        lowrank = rewrite_with_report(model, rewrite_config(args, calib_path)).model
        rewrite_s = time.perf_counter() - start
    print("low-rank + INT8, each node in its faster form ...", flush=True)
    start = time.perf_counter()
    timing = onnxruntime_timing(lowrank, args.threads, args.opt_level, args.shapes)
    both = quantize_fastest(lowrank, calib, timing, held_back=held)
    decide_s = time.perf_counter() - start

    models = {"original": model, "INT8 alone": int8, "low-rank alone": lowrank, "low-rank + INT8": both.model}
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for file, derived in (("int8.onnx", int8), ("lowrank.onnx", lowrank), ("lowrank_int8.onnx", both.model)):
            save_model(derived, args.keep / file, overwrite=True)
    print("timing the four in one alternated run ...", flush=True)
    stats = measure_latency(list(models.values()), threads=args.threads, runs=args.runs, warmup=max(5, args.runs // 10),
                            input_shapes=args.shapes, opt_level=args.opt_level)
    load_after = os.getloadavg()
    rows = []
    for (label, m), st in zip(models.items(), stats):
        row = {"model": label, "median_ms": st.median, "spread": st.spread, "speedup": stats[0].median / st.median,
               "error": int8_error(model, m, held) if m is not model else 0.0}
        if y is not None:
            row["top1"] = top1(m, held, labels)
        rows.append(row)
    facts = {
        "command": "python tools/bench_int8.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu(), "onnxruntime": runtime.version(), "threads": args.threads,
        "opt_level": args.opt_level, "runs": args.runs, "input_shape": list(args.shapes[name]),
        "calibration_inputs": len(calib), "held_back": len(held),
        "date": datetime.date.today().isoformat(), "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after], "rewrite_s": rewrite_s, "int8_decision_s": decide_s,
        "total_s": time.perf_counter() - started, "rows": rows, "lowrank_int8": both.to_dict(),
    }
    print(render(facts))
    if args.out is not None:
        args.out.write_text(json.dumps(facts, indent=1) + "\n")
    return 0


def render(facts: dict) -> str:
    labels = "top1" in facts["rows"][0]
    header = ["model", "median ms", "speed-up", "output error vs original"] + (["top-1"] if labels else [])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in facts["rows"]:
        cells = [r["model"], f"{r['median_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['error']:.4f}"]
        lines.append("| " + " | ".join(cells + ([f"{r['top1']:.2%}"] if labels else [])) + " |")
    both = facts["lowrank_int8"]
    lines += ["", "low-rank + INT8, per node (ms in the float rewrite / with every node in int8):", ""]
    lines += [f"- {n['node']} ({n['op']}): {n['form']}, {_ms(n['float_ms'])} / {_ms(n['int8_ms'])}"
              for n in both["nodes"]]
    lines += [f"- note: {note}" for note in both["notes"]]
    lines.append(f"- output error of low-rank + INT8 against low-rank alone: {both['error']:.4f}")
    lines += ["", f"{facts['cpu']}; onnxruntime {facts['onnxruntime']}; {facts['threads']} thread(s), "
                  f"opt level {facts['opt_level']}, input {'x'.join(map(str, facts['input_shape']))}, "
                  f"{facts['runs']} alternated runs per model; {facts['calibration_inputs']} calibration and "
                  f"{facts['held_back']} held-back inputs; {facts['date']}; load average {facts['load_before']} "
                  f"before, {facts['load_after']} after; rewrite {facts['rewrite_s']:.1f} s, INT8 decision "
                  f"{facts['int8_decision_s']:.1f} s, all {facts['total_s']:.1f} s"]
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())

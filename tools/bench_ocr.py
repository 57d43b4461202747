"""Issue 16's OCR target, measured: accuracy, 1-thread latency and rewrite time of `onnx-cp rewrite --rank 0.25`.

    python tools/bench_ocr.py                                            # CRNN, models/crnn_ocr.onnx
    python tools/bench_ocr.py --model assets/ch_PP-OCRv4_rec_infer.onnx --lines 300
    python tools/bench_ocr.py --model models/crnn_ocr.onnx --json out/ocr/bench_crnn.json

For one recognizer (the CRNN of tools/ocr/model.py or PP-OCRv4's, see tools/ocr/recognizers.py)
and the labelled lines of ``--data`` (models/crnn_ocr_test.npz: held-out fonts):

1. the original's exact-match rate and character accuracy (1 - edit distance / label length,
   averaged over lines), greedy CTC decoding;
2. ``onnx-cp rewrite MODEL --rank 0.25 -o ...`` run as a command, its wall time measured:
   (a) without calibration data; (b) with ``--calib`` 512 unlabeled lines rendered with the
   training fonts (seed 100, never the test lines; labels unused), when ``onnx-cp rewrite``
   has a --calib option that fits with data (it lists --no-recover); (c) the same with
   --no-recover, when that exists; ``--rewrite-arg`` adds options to every rewrite;
3. each rewrite's accuracy on the same lines and its agreement with the original (the share of
   lines whose decoded text equals the original's), and the whole-model latency of all models
   at 1 thread, batch 1, in alternation (onnx_cp.bench.measure_latency: warm-up, medians).

Prints a Markdown table; --json writes every figure. The rewritten models stay in --work.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))  # tools/ocr, tools/charcnn

from ocr.ctc import scores  # noqa: E402
from ocr.recognizers import read_lines, recognizer  # noqa: E402
from ocr.render import TRAIN_FONTS, render_lines  # noqa: E402

from onnx_cp.bench import measure_latency  # noqa: E402

CALIB_LINES, CALIB_SEED = 512, 100


def rewrite_help() -> str:
    return subprocess.run(["onnx-cp", "rewrite", "--help"], capture_output=True, text=True, check=True).stdout


def variants(help_text: str, calib: Path) -> list[tuple[str, list[str]]]:
    """(label, extra rewrite options) of each rewrite this onnx-cp can run."""
    out = [("rank 0.25", [])]
    if "--calib" in help_text and "--no-recover" in help_text:  # data-aware fits have landed
        out.append(("rank 0.25 + calib", ["--calib", str(calib)]))  # all CALIB_LINES of it
        out.append(("rank 0.25 + calib, no recovery", ["--calib", str(calib), "--no-recover"]))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "crnn_ocr.onnx")
    parser.add_argument("--data", type=Path, default=REPO / "models" / "crnn_ocr_test.npz",
                        help="labelled lines: x uint8 N x 1 x 32 x 128, labels")
    parser.add_argument("--lines", type=int, default=None, help="use the first N lines of --data (default: all)")
    parser.add_argument("--rank", default="0.25")
    parser.add_argument("--rewrite-arg", action="append", default=[],
                        help="extra option for every onnx-cp rewrite, e.g. --rewrite-arg=--jobs=2 (repeatable)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model (latency)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the accuracy runs")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "ocr" / "bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    rec = recognizer(args.model)
    data = np.load(args.data)
    x, labels = data["x"][:args.lines], [str(s) for s in data["labels"][:args.lines]]
    work = args.work / args.model.stem
    work.mkdir(parents=True, exist_ok=True)

    calib = work / "calib.npy"
    np.save(calib, rec.preprocess(render_lines(CALIB_LINES, seed=CALIB_SEED, fonts=TRAIN_FONTS).x))

    original = read_lines(args.model, rec, x, threads=args.threads)
    rows = [{"variant": "original", "path": str(args.model), "command": None, "rewrite_s": None,
             **dict(zip(("exact", "chars"), scores(original, labels))), "agreement": 1.0}]
    for label, extra in variants(rewrite_help(), calib):
        out = work / f"{args.model.stem}.{len(rows)}.onnx"
        cmd = ["onnx-cp", "rewrite", str(args.model), "--rank", args.rank, "-o", str(out), "--overwrite",
               "--input-shape", rec.cli_shape(), "--report", str(out.with_suffix(".json")), "-q",
               *extra, *args.rewrite_arg]
        print("$ " + shlex.join(cmd), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(f"  failed ({done.returncode}) after {seconds:.0f} s: {done.stderr.strip()[-800:]}", flush=True)
            rows.append({"variant": label, "command": shlex.join(cmd), "rewrite_s": seconds, "failed": done.stderr})
            continue
        texts = read_lines(out, rec, x, threads=args.threads)
        report = json.loads(out.with_suffix(".json").read_text())
        statuses = [layer.get("status") for layer in report.get("layers", [])]
        rows.append({"variant": label, "path": str(out), "command": shlex.join(cmd), "rewrite_s": seconds,
                     "layers": {s: statuses.count(s) for s in sorted(set(statuses))},
                     **dict(zip(("exact", "chars"), scores(texts, labels))),
                     "agreement": float(np.mean([a == b for a, b in zip(texts, original)]))})
        print(f"  {seconds:.0f} s; exact {rows[-1]['exact']:.2%}", flush=True)

    measured = [r for r in rows if "path" in r]
    stats = measure_latency([r["path"] for r in measured], threads=1, warmup=args.warmup, runs=args.runs,
                            input_shapes={rec.input_name: rec.input_shape})
    for row, s in zip(measured, stats):
        row["latency"] = s.to_dict()
        row["speedup"] = stats[0].median / s.median

    table = markdown(rows, rec.kind, len(labels))
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": str(args.model), "kind": rec.kind, "data": str(args.data), "lines": len(labels),
            "rank": args.rank, "calib": {"lines": CALIB_LINES, "seed": CALIB_SEED, "fonts": list(TRAIN_FONTS)},
            "machine": platform.platform(), "rows": rows, "table": table}, indent=2))
    return 0


def markdown(rows: list[dict], kind: str, n: int) -> str:
    base = rows[0]
    lines = [f"{kind}, {n} lines, greedy CTC; latency: onnxruntime CPU, 1 thread, batch 1", "",
             "| variant | Convs (from the report) | exact match | Δ points | char accuracy | Δ points | "
             "agrees with original | latency ms (median, spread) | speed-up | rewrite wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['variant']} | failed | | | | | | | | {r['rewrite_s']:.0f} |")
            continue
        lat = r["latency"]
        layers = ", ".join(f"{v} {k}" for k, v in r.get("layers", {}).items()) or "-"
        lines.append(
            f"| {r['variant']} | {layers} | {r['exact']:.2%} | {100 * (r['exact'] - base['exact']):+.1f} | {r['chars']:.2%} | "
            f"{100 * (r['chars'] - base['chars']):+.1f} | {r['agreement']:.2%} | {lat['median_ms']:.2f} "
            f"({lat['spread']:.2f}) | {r['speedup']:.2f}x | "
            + ("-" if r["rewrite_s"] is None else f"{r['rewrite_s']:.0f}") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

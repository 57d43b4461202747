"""Per-layer and whole-model speed of onnx-cp rewrites in onnxruntime's CPU EP, on real graphs.

    python tools/bench_latency.py                               # vgg19, resnet50, nudenet
    python tools/bench_latency.py --models nudenet --ranks 0.25 --threads 1,2

For every model, rank rule and thread count: rewrite with ``realize="auto"`` timed at that
thread count (so auto chooses for the session it will run in), then, with the original and
the rewrite in alternation, whole-model latency (onnx_cp.bench.measure_latency) and per-layer
times from onnxruntime's profiler (onnx_cp.bench.profile_nodes + compare). Reported per run:
layers rewritten / kept by auto, per rewritten layer speed-up, multiply-add ratio and
efficiency = speed-up / multiply-add ratio (median and worst), the slowest rewritten layer's
speed-up, and the whole-model speed-up with the larger of the two models' latency spreads
((p90 - p10) / median; above about 0.1 the machine was busy).

The zoo graphs (vgg19, resnet50) come from the onnx wheel with random weights
(onnx_cp.testing.materialize_zoo); nudenet is the pretrained YOLOv8n detector extracted by
``python tools/fetch_assets.py``. Latency does not depend on the fitted values, so fits are
cut short (``--max-iter``, default 3) to keep the run in minutes; the rewrite tests and
tools/bench_solver.py cover fit quality.

Writes the tables to stdout and, with --out, to a Markdown file.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from onnx_cp import RewriteConfig, rewrite_with_report  # noqa: E402
from onnx_cp.bench import compare, measure_latency, profile_nodes  # noqa: E402
from onnx_cp.testing import materialize_zoo  # noqa: E402

NUDENET = REPO / "assets" / "nudenet_320n.onnx"
SHAPES = {"vgg19": None, "resnet50": None, "nudenet": {"images": (1, 3, 320, 320)}}


def load(name: str):
    import onnx

    if name == "nudenet":
        if not NUDENET.exists():
            sys.exit(f"error: {NUDENET} is missing; run python tools/fetch_assets.py")
        return onnx.load(NUDENET)
    return materialize_zoo(name)


def run_case(name: str, model, rank: str, threads: int, args) -> dict:
    shapes = SHAPES[name] or {}
    start = time.perf_counter()
    config = RewriteConfig(ranks=(rank,), max_iter=args.max_iter, threads=threads, input_shapes=shapes,
                           realize=args.realize)
    result = rewrite_with_report(model, config)
    fit_s = time.perf_counter() - start
    rewritten = result.model
    latency = measure_latency([model, rewritten], threads=threads, runs=args.runs, warmup=args.warmup,
                              input_shapes=shapes)
    profiles = profile_nodes([model, rewritten], threads=threads, runs=args.profile_runs,
                             warmup=args.warmup, input_shapes=shapes)
    table = compare(*profiles, latency=tuple(latency))
    rows = [row for row in table.layers if row.rewritten and row.speedup is not None]
    effs = [row.efficiency for row in rows if row.efficiency is not None]
    statuses = [layer.status for layer in result.report.layers]
    return {
        "model": name, "rank": rank, "threads": threads, "fit_s": fit_s,
        "rewritten": statuses.count("rewritten"), "kept": statuses.count("kept"),
        "forms": {form: sum(1 for l in result.report.layers if l.status == "rewritten" and l.realization == form)
                  for form in ("cp4", "cp3")},
        "median_eff": statistics.median(effs) if effs else None,
        "min_eff": min(effs) if effs else None,
        "min_speedup": min((row.speedup for row in rows), default=None),
        "slower": [row.layer for row in rows if row.speedup < 1.0],
        "mac_ratio": table.cp_layers.mac_ratio if table.cp_layers else None,
        "layers_speedup": table.cp_layers.speedup if table.cp_layers else None,
        "orig_ms": latency[0].median, "cp_ms": latency[1].median,
        "spread": max(latency[0].spread, latency[1].spread),
        "speedup": latency[0].median / latency[1].median,
        "rows": rows,
    }


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def summary_table(results: list[dict]) -> str:
    head = ("| model | rank | threads | rewritten / kept | cp4 / cp3 | MAC ratio (rewritten layers) | "
            "speed-up (rewritten layers) | median efficiency | worst efficiency | slowest layer speed-up | "
            "whole model ms: original -> CP | whole-model speed-up | spread |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['rank']} | {r['threads']} | {r['rewritten']} / {r['kept']} | "
            f"{r['forms']['cp4']} / {r['forms']['cp3']} | {fmt(r['mac_ratio'], '.2f')}x | "
            f"{fmt(r['layers_speedup'], '.2f')}x | {fmt(r['median_eff'], '.2f')} | {fmt(r['min_eff'], '.2f')} | "
            f"{fmt(r['min_speedup'], '.2f')}x | {r['orig_ms']:.2f} -> {r['cp_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{r['spread']:.2f} |")
    return "\n".join(lines)


def layer_table(r: dict) -> str:
    lines = [f"{r['model']}, rank {r['rank']}, {r['threads']} thread(s):", "",
             "| layer | rank | original ms | CP ms | speed-up | MAC ratio | efficiency |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row.layer} | {row.rank} | {row.original_ms:.3f} | {row.rewritten_ms:.3f} | "
                     f"{row.speedup:.2f}x | {fmt(row.mac_ratio, '.2f')}x | {fmt(row.efficiency, '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vgg19,resnet50,nudenet")
    parser.add_argument("--ranks", default="0.5,0.25", help="comma-separated rank rules (see onnx-cp rewrite --rank)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--realize", default="auto", choices=["auto", "cp4", "cp3"])
    parser.add_argument("--max-iter", type=int, default=3, help="solver iterations (latency does not depend on them)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--layers", action="store_true", help="also print every rewritten layer")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    results = []
    for name in args.models.split(","):
        model = load(name)
        for rank in args.ranks.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                print(f"{name} rank {rank} threads {threads} ...", file=sys.stderr, flush=True)
                results.append(run_case(name, model, rank, threads, args))
                print(summary_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = summary_table(results)
    if args.layers:
        text += "\n\n" + "\n\n".join(layer_table(r) for r in results)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

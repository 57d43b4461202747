"""Measure rank selection: --target-speedup against onnxruntime, and allocations at one MAC budget.

    python tools/rank_selection_bench.py vgg19 --speedup 3 --out docs/rank_selection_vgg19.json
    python tools/rank_selection_bench.py assets/nudenet_320n.onnx --input-shape images=1x3x320x320

(a) rewrites the model with ``--target-speedup S`` and times original and result in onnxruntime
    (1 thread, models alternating, medians);
(b) at one multiply-add budget, compares the final-output error on held-out calibration inputs of
    the proxy-driven allocation (the best on the calibration inputs of the knapsack, uniform-error
    and uniform-rank starts, then optuna), the knapsack alone, a uniform rank, and --max-error
    alone (the smallest common kernel-error bound that fits the budget). All use the same fits.

Calibration inputs are synthetic smooth images in [0, 1] (no image data set on this machine):
``--calib-count`` of them drive the proxy, as many others are held out. Prints JSON and a
markdown table; ``--out`` also writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report
from onnx_cp.bench import measure_latency
from onnx_cp.sites import find_convs
from onnx_cp.model_io import load_model
from onnx_cp.ranks import proxy
from onnx_cp.ranks.allocate import uniform_error
from onnx_cp.calibrate.data import CalibrationData, input_shape
from onnx_cp.ranks.cost import model_macs, option_macs
from onnx_cp.ranks.grid import uniform_rank
from onnx_cp.ranks.plan import plan_ranks
from onnx_cp.stages.discover import select
from onnx_cp.splice import Replacement, splice
from onnx_cp.shapes import infer_shapes, parse_input_shapes
from onnx_cp.testing import ZOO_NAMES, materialize_zoo


def smooth_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Sums of blurred noise at several scales, in [0, 1]: image-like spatial correlation."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    out = np.zeros((count, c, h, w), np.float32)
    for scale in (4, 16, 64):
        small = rng.standard_normal((count, c, max(1, h // scale), max(1, w // scale)))
        big = np.repeat(np.repeat(small, scale, axis=2), scale, axis=3)[:, :, :h, :w]
        pad = np.zeros((count, c, h, w))
        pad[:, :, :big.shape[2], :big.shape[3]] = big
        out += pad.astype(np.float32) / scale ** 0.5
    lo, hi = out.min(axis=(1, 2, 3), keepdims=True), out.max(axis=(1, 2, 3), keepdims=True)
    return (out - lo) / (hi - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"a zoo name ({', '.join(ZOO_NAMES)}) or an .onnx path")
    parser.add_argument("--speedup", type=float, default=3.0)
    parser.add_argument("--budget-share", type=float, default=None,
                        help="(b) budget as a share of the model's MACs (default 1/speedup)")
    parser.add_argument("--cost", choices=["macs", "latency"], default="latency")
    parser.add_argument("--input-shape", action="append", default=[])
    parser.add_argument("--calib-count", type=int, default=4)
    parser.add_argument("--search", type=int, default=12)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--max-time", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--skip", choices=["a", "b"], action="append", default=[])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    shapes_in = parse_input_shapes(tuple(args.input_shape))
    model = materialize_zoo(args.model) if args.model in ZOO_NAMES else load_model(args.model)
    name, shape = input_shape(model, shapes_in)
    images = smooth_images(2 * args.calib_count, shape, seed=1)
    work = Path("/tmp/onnx_cp_rank_bench")
    work.mkdir(exist_ok=True)
    calib = work / "calib.npz"
    np.savez(calib, x=images[:args.calib_count])
    held_out = [{name: images[i:i + 1]} for i in range(args.calib_count, 2 * args.calib_count)]
    fit = dict(max_iter=args.max_iter, max_time=args.max_time, stabilize="never", realize="cp4",
               input_shapes=shapes_in)
    result = {"model": args.model, "speedup_target": args.speedup, "cost": args.cost,
              "fit": {k: v for k, v in fit.items() if k != "input_shapes"}, "calib_count": args.calib_count,
              "search": args.search, "command": " ".join(sys.argv)}
    progress = lambda what, done, total: print(f"  [{done}/{total}] {what}", file=sys.stderr)  # noqa: E731

    if "a" not in args.skip:
        start = time.perf_counter()
        selection = RankSelection(target_speedup=args.speedup, cost=args.cost, calib=str(calib),
                                  calib_count=args.calib_count, search=args.search)
        try:
            rewritten = rewrite_with_report(model, RewriteConfig(selection=selection, **fit), progress=progress)
        except Exception as exc:  # an unreachable target is a result too
            result["a"] = {"error": str(exc)}
        else:
            seconds = time.perf_counter() - start
            base, new = measure_latency([model, rewritten.model], threads=1, warmup=3, runs=args.runs,
                                        input_shapes=shapes_in)
            summary = rewritten.report.rank_selection
            result["a"] = {
                "seconds": seconds, "predicted_speedup": summary["predicted_speedup"],
                "rounds": summary["rounds"], "output_error_calib": summary["output_error"],
                "greedy_output_error_calib": summary["greedy_output_error"],
                "output_error_held_out": proxy.output_error(proxy.run(rewritten.model, held_out),
                                                            proxy.run(model, held_out)),
                "original_ms": base.median, "rewritten_ms": new.median,
                "spread": max(base.spread, new.spread), "measured_speedup": base.median / new.median,
                "layers": [{"node": l.node, "rank": l.rank, "kernel_error": l.rel_error, "proxy": l.proxy_error,
                            "cost": l.cost} for l in rewritten.report.rewritten]}
        print(json.dumps(result["a"], indent=1)[:3000], file=sys.stderr)

    if "b" not in args.skip:
        result["b"] = compare_allocations(model, shapes_in, calib, held_out, args, fit, progress)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    if "b" in result:
        print(markdown(result["b"]))


def compare_allocations(model, shapes_in, calib, held_out, args, fit, progress) -> dict:
    """(b): proxy allocation, uniform rank and --max-error alone at one MAC budget, on held-out inputs."""
    shapes, _ = infer_shapes(model, shapes_in)
    sites = find_convs(model, shapes)
    total = model_macs(model, sites, shapes)
    share = args.budget_share or 1 / args.speedup
    budget = int(total * share)
    selection = RankSelection(budget_macs=budget, calib=str(calib), calib_count=args.calib_count,
                              search=args.search, measure=False)
    config = RewriteConfig(selection=selection, **fit)
    data = CalibrationData.read(model, str(calib), config.calib_samples, args.calib_count, config.seed, shapes_in)
    plan = plan_ranks(model, sites, select(sites, config), shapes, config, progress=progress, data=data)
    layers, fixed = plan.layers, plan.summary.fixed
    reference = proxy.run(model, held_out)

    def evaluate(chosen: list[tuple]) -> dict:
        variant = splice(model, [Replacement(s, "cp4", r, f) for s, r, f in chosen])[0]
        rewritten = {s.key for s, _, _ in chosen}
        macs = fixed + sum(option_macs(s, "cp", r) for s, r, _ in chosen) + sum(
            l.site.cost.macs for l in layers if l.site.key not in rewritten)
        return {"macs": int(macs), "speedup_macs": total / macs,
                "output_error_held_out": proxy.output_error(proxy.run(variant, held_out), reference),
                "ranks": {s.name: r for s, r, _ in chosen}}

    def from_picks(picks):
        return [(l.site, l.ranks[k], list(l.fits[k].groups)) for l, k in zip(layers, picks)
                if k < len(l.ranks)]

    rows = {"proxy (best start + search)": evaluate(from_picks(plan.picks))}
    rows["proxy, knapsack only"] = evaluate(from_picks(greedy_picks(layers, plan.summary.budget)))
    errors = [[f.rel_error for f in l.fits] + [0.0] for l in layers]
    costs = [l.costs + [l.before] for l in layers]
    rows["--max-error alone"] = evaluate(from_picks(uniform_error(errors, costs, plan.summary.budget)))
    rank = uniform_rank(layers, "cp", budget - fixed)
    rows[f"uniform rank {rank}"] = evaluate(from_picks([l.ranks.index(min(rank, l.cap)) for l in layers]))
    return {"budget_macs": budget, "total_macs": total, "budget_share": share, "rows": rows,
            "calib_errors": {**plan.summary.starts, "after search": plan.summary.output_error}}


def greedy_picks(layers, budget):
    from onnx_cp.ranks.allocate import allocate

    options = [l.options() for l in layers]
    return allocate([o[0] for o in options], [o[1] for o in options], budget)


def markdown(b: dict) -> str:
    lines = [f"budget {b['budget_macs'] / 1e9:.3f} GMACs of {b['total_macs'] / 1e9:.3f} "
             f"({b['budget_share']:.2f})",
             "", "| allocation | MACs (G) | MAC speed-up | final-output rel. error, held-out |",
             "|---|---|---|---|"]
    for name, row in b["rows"].items():
        lines.append(f"| {name} | {row['macs'] / 1e9:.3f} | {row['speedup_macs']:.2f}x | "
                     f"{row['output_error_held_out']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

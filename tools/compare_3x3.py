"""GKPD against CP and Tucker-2 (SVD beside them) on trained ResNet-style 3x3 Convs, at equal
kernel error: rank, parameters, multiply-adds and measured latency of each.

    python tools/fetch_assets.py nudenet
    python tools/compare_3x3.py --json compare_3x3.json

Prints a markdown table per layer (the figures in docs/decompositions.md); about 4 minutes on
2 cores. The layers are the first 3x3 Conv of the first residual bottleneck (a shortcut Add
around two 3x3 Convs) of C2f blocks 6 and 8 in the pretrained YOLOv8n detector
assets/nudenet_320n.onnx, at images=1x3x320x320. Each is cut out as a one-Conv model (its
trained weight, bias, attributes and real input size). Every row is what
``onnx_cp.rewrite_with_report`` makes of that model at one rank with the form forced
(``realize=<form>``, so no row falls back to the Conv), as ``onnx-cp rewrite --rank R`` would.
For each error level a row is the rank tried with the fewest multiply-adds whose relative kernel
error ||W - W_hat|| / ||W|| is at most the level:

- CP: ranks in steps of 16 (as --max-error searches a large layer), up by factors of about 1.5
  until one passes, then bisection below it; each fit cold from the seed, NLS with the rewrite's
  defaults. Searched in cp4 form; the same fit is also realized as cp3.
- Tucker-2 (R1 = R2 = R) and SVD: every rank in steps of 8 (onnxruntime's NCHWc channel block
  with AVX2, so no row is slowed by an odd channel count).
- CP, Tucker-2 and SVD go up to their cap: the largest rank with fewer multiply-adds than the Conv.
- GKPD: the term counts in GKPD_TERMS, each with the A shape its own search picks (the search
  refuses a count when no shape is within its cost bound).

Latency: onnxruntime CPU, 1 thread, batch 1, graph optimization all, every model of a layer in
one alternating run with warm-up (``onnx_cp.bench.measure_latency``), medians and p10-p90.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper
from threadpoolctl import threadpool_limits

import onnx_cp
from onnx_cp import decompositions
from onnx_cp.bench import measure_latency
from onnx_cp.decompositions.cp_solver import fit_kernel
from onnx_cp.sites import find_convs
from onnx_cp.shapes import infer_shapes

MODEL = "assets/nudenet_320n.onnx"
INPUT_SHAPES = {"images": (1, 3, 320, 320)}
LAYERS = ("/model.6/m.0/cv1/conv/Conv", "/model.8/m.0/cv1/conv/Conv")
LEVELS = (0.25, 0.3, 0.35)
GKPD_TERMS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CP_STEP, CHANNEL_STEP = 16, 8


@dataclass
class Probe:
    """One rewrite of the one-Conv model at a requested rank."""

    requested: int
    rank: str  # as the report writes it: 96, 48x48, 12:2x1x3x3
    rel_error: float  # inf when the decomposition refused the rank
    params: int | None = None
    macs: int | None = None
    model: onnx.ModelProto | None = None
    seconds: float = 0.0
    refusal: str | None = None


class Layer:
    """One trained Conv cut out of the model, and its rewrites at the ranks asked so far."""

    def __init__(self, model: onnx.ModelProto, site, seed: int):
        self.site, self.seed = site, seed
        self.single = one_conv_model(model, site)
        self.probes: dict[tuple[str, int], Probe] = {}
        self.cp_fits: dict[tuple[int, int], object] = {}  # (rank, seed) -> KernelFit, for cp4 and cp3 alike

    def at(self, form: str, rank: int) -> Probe:
        if (form, rank) not in self.probes:
            probe = self._rewrite(form, rank)
            self.probes[form, rank] = probe
            what = f"refused ({probe.refusal})" if probe.refusal else f"{probe.rank}: error {probe.rel_error:.4f}"
            print(f"  {self.site.name} {form} {what} ({probe.seconds:.1f} s)", flush=True)
        return self.probes[form, rank]

    def _rewrite(self, form: str, rank: int) -> Probe:
        decomposition = decompositions.for_form(form).name
        config = onnx_cp.RewriteConfig(ranks=(rank,), decomposition=decomposition, realize=form, measure=False,
                                       cap_rank=False, jobs=1, seed=self.seed)

        def cp_fit(kernel, r, seed):  # the rewrite's own CP fit, kept for the other form
            if (r, seed) not in self.cp_fits:
                self.cp_fits[r, seed] = fit_kernel(kernel, r, seed, config.fit_options())
            return self.cp_fits[r, seed]

        start = time.perf_counter()
        result = onnx_cp.rewrite_with_report(self.single, config, fitter=cp_fit if decomposition == "cp" else None)
        layer = result.report.layers[0]
        seconds = time.perf_counter() - start
        if layer.status == "skipped":  # gkpd: no shape is cheap enough at this many terms
            return Probe(rank, "-", math.inf, seconds=seconds, refusal=layer.reason)
        if layer.status != "rewritten" or layer.realization != form:
            raise RuntimeError(f"{form} rank {rank}: the layer was {layer.status} as {layer.realization} "
                               f"({layer.reason})")
        return Probe(rank, str(layer.rank), layer.rel_error, layer.params_after, layer.macs_after, result.model,
                     seconds)

    def cap(self, decomposition: str) -> int:
        """The largest rank whose first form costs fewer multiply-adds than the Conv."""
        site = self.site
        return decompositions.get(decomposition).cap(site.spec, site.in_shape, site.out_shape)


def one_conv_model(model: onnx.ModelProto, site) -> onnx.ModelProto:
    """The Conv of ``site`` alone: input x of its real shape, its weight, bias and attributes."""
    weights = {t.name: t for t in model.graph.initializer}
    inputs = ["x", "W"] + (["B"] if site.bias else [])
    inits = [numpy_helper.from_array(site.weight.value.astype(np.float32), "W")]
    if site.bias:
        inits.append(numpy_helper.from_array(numpy_helper.to_array(weights[site.bias]), "B"))
    node = helper.make_node("Conv", inputs, ["y"], name=site.name)
    node.attribute.extend(site.node.attribute)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(site.in_shape))
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(site.out_shape))
    single = helper.make_model(helper.make_graph([node], "one_conv", [x], [y], inits),
                               opset_imports=list(model.opset_import))
    single.ir_version = model.ir_version
    onnx.checker.check_model(single, full_check=True)
    return single


def cp_search(layer: Layer, level: float) -> None:
    """Fit CP ranks (multiples of CP_STEP up to the cap) until the smallest passing one is
    bracketed: up by ~1.5x from the bottom, then bisection between the last failure and the pass."""
    cap = layer.cap("cp")
    grid = sorted({*range(CP_STEP, cap + 1, CP_STEP), cap})
    ok = lambda i: layer.at("cp4", grid[i]).rel_error <= level  # noqa: E731
    low, high = -1, 0  # low fails (-1: below the grid), high is tried next
    while not ok(high):
        if high == len(grid) - 1:
            return
        low, high = high, next((i for i in range(high + 1, len(grid)) if grid[i] >= 1.5 * grid[high]), len(grid) - 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)


def compare_layer(layer: Layer, levels, warmup: int, runs: int) -> dict:
    for level in levels:
        cp_search(layer, level)
    for form in ("tucker2", "svd"):
        cap = layer.cap(form)
        for rank in sorted({*range(CHANNEL_STEP, cap + 1, CHANNEL_STEP), cap}):
            layer.at(form, rank)
    for terms in GKPD_TERMS:
        layer.at("gkpd", terms)
    for rank in sorted(r for form, r in layer.probes if form == "cp4"):
        layer.at("cp3", rank)

    rows = []  # (level, form, Probe or None): the cheapest passing probe of each form
    for form in ("cp4", "cp3", "tucker2", "gkpd", "svd"):
        for level in levels:
            passing = [p for (f, _), p in layer.probes.items() if f == form and p.rel_error <= level]
            rows.append((level, form, min(passing, key=lambda p: (p.macs, p.requested)) if passing else None))

    # Every distinct model in a row, the Conv first, timed in one alternating run.
    models, index = [layer.single], {}
    for _, _, probe in rows:
        if probe is not None and id(probe) not in index:
            index[id(probe)] = len(models)
            models.append(probe.model)
    load = os.getloadavg()
    stats = measure_latency(models, threads=1, warmup=warmup, runs=runs, opt_level="all", seed=layer.seed)
    site, conv = layer.site, stats[0]
    result = {
        "layer": site.name, "weight_shape": list(site.weight.value.shape), "in_shape": list(site.in_shape),
        "strides": list(site.spec.strides), "pads": list(site.spec.pads),
        "conv": {"params": site.cost.params, "macs": site.cost.macs, "latency": conv.to_dict()},
        "load_average_at_timing": list(load), "rows": [],
        "tried": [{"form": f, "requested": r, "rank": p.rank, "rel_error": p.rel_error, "params": p.params,
                   "macs": p.macs, "refusal": p.refusal} for (f, r), p in sorted(layer.probes.items())],
    }
    for level, form, probe in rows:
        row = {"level": level, "form": form, "reached": probe is not None}
        if probe is not None:
            s = stats[index[id(probe)]]
            row.update(rank=probe.rank, rel_error=probe.rel_error, params=probe.params, macs=probe.macs,
                       latency=s.to_dict(), speedup=conv.median / s.median)
        result["rows"].append(row)
    return result


def markdown(layer: dict) -> str:
    conv = layer["conv"]
    lines = [f"{layer['layer']}: {'x'.join(map(str, layer['weight_shape']))}, input "
             f"{'x'.join(map(str, layer['in_shape']))}, strides {layer['strides']}, pads {layer['pads']}",
             "",
             "| error at most | decomposition (form) | rank | error | params | MMACs | ms (p10-p90) | speed-up |",
             "|---:|---|---|---:|---:|---:|---|---:|",
             f"| - | conv | - | 0 | {conv['params']} | {conv['macs'] / 1e6:.2f} | {_ms(conv['latency'])} | 1.00x |"]
    for r in layer["rows"]:
        owner = decompositions.for_form(r["form"]).name
        label = owner if owner == r["form"] else f"{owner} ({r['form']})"
        if not r["reached"]:
            lines.append(f"| {r['level']} | {label} | not reached by the ranks tried | | | | | |")
            continue
        lines.append(f"| {r['level']} | {label} | {r['rank']} | {r['rel_error']:.3f} | {r['params']} | "
                     f"{r['macs'] / 1e6:.2f} | {_ms(r['latency'])} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def _ms(latency: dict) -> str:
    return f"{latency['median_ms']:.3f} ({latency['p10_ms']:.3f}-{latency['p90_ms']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--layer", action="append", dest="layers", help="a Conv's node name (repeatable)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="relative kernel errors, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    levels = tuple(sorted(float(v) for v in args.levels.split(",")))
    start = time.perf_counter()
    model = onnx_cp.load_model(args.model)
    shapes, _ = infer_shapes(model, INPUT_SHAPES)
    sites = {s.name: s for s in find_convs(model, shapes)}
    results = []
    # One BLAS thread, as the package's CP solver runs: gkpd's shape search is a few hundred small
    # SVDs, which two OpenBLAS threads made 10x to 90x slower on this 2-core machine under load.
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.layers or LAYERS:
            if name not in sites:
                raise SystemExit(f"no Conv named {name!r} in {args.model}; 'onnx-cp inspect {args.model}' lists them")
            results.append(compare_layer(Layer(model, sites[name], args.seed), levels, args.warmup, args.runs))
    seconds = time.perf_counter() - start
    for layer in results:
        print()
        print(markdown(layer))
        print("\nload average (1, 5, 15 min) when timed: "
              + ", ".join(f"{v:.2f}" for v in layer["load_average_at_timing"]))
    print(f"\n{seconds:.0f} s in all, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"model": args.model, "input_shapes": {k: list(v) for k, v in INPUT_SHAPES.items()},
                       "levels": list(levels), "seed": args.seed, "threads": 1, "warmup": args.warmup,
                       "runs": args.runs, "seconds": seconds, "layers": results}, f, indent=1)


if __name__ == "__main__":
    main()

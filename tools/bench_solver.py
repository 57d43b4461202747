"""Benchmark onnx_cp.solver.cp_nls against tensorly's ALS (parafac) on conv kernels.

For every (kernel, rank) case, in one process and one after the other:

1. tensorly ``parafac`` for ``--als-iters`` sweeps (tol=0, so all of them run), once from its
   SVD start and once from its random start, error vs time recorded through its callback;
2. ``cp_nls`` (SVD start) with a budget of the longer ALS run's time, error vs time
   recorded through its callback;
3. ``cp_nls(init=<that fit>, max_iter=0, stabilize=True)``: the degeneracy correction alone.

Reported per case: the time cp_nls needs to reach each ALS run's final error and the
speed-up, both methods' errors at equal wall-clock time, and the degeneracy measure with and
without the correction. Results go to stdout and, unless --quick or --no-write, into
docs/solver.md (between the BENCH markers) and docs/solver_error_vs_time.png.

Kernels: the largest 3x3 Conv kernels of the nudenet detector (assets/nudenet_320n.onnx,
``python tools/fetch_assets.py nudenet``), two synthetic kernels of AlexNet conv2's shape
(256x48x5x5; no pretrained AlexNet ships here), the large kernels of the character
classifier models/charcnn36.onnx when it exists, and those of any model given with --kernels.

    python tools/bench_solver.py            # default set, about 12 minutes on 2 cores
    python tools/bench_solver.py --quick    # smoke run, about a minute, writes nothing
    python tools/bench_solver.py --all --kernels models/charcnn36.onnx
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from onnx_cp.solver import cp_nls, degeneracy, relative_error  # noqa: E402

NUDENET = REPO / "assets" / "nudenet_320n.onnx"
CHARCNN = REPO / "models" / "charcnn36.onnx"  # the character classifier (tools/reproduce_lebedev.py)
DOC = REPO / "docs" / "solver.md"
FIGURE = REPO / "docs" / "solver_error_vs_time.png"
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"
TARGET_SPEEDUP = 20.0


@dataclass
class Case:
    name: str
    kernel: np.ndarray
    rank: int


@dataclass
class Trace:
    """Error vs wall-clock time of one solver run (time 0 = the call)."""

    times: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)

    def add(self, t: float, err: float) -> None:
        self.times.append(t)
        self.errors.append(float(err))

    def time_to(self, target: float) -> float | None:
        for t, e in zip(self.times, self.errors):
            if e <= target:
                return t
        return None

    def error_by(self, t: float) -> float:
        """Error of the last iterate reported by time t; 1.0 (no model yet) before the first."""
        idx = int(np.searchsorted(self.times, t, side="right")) - 1
        return 1.0 if idx < 0 else self.errors[idx]

    def error_at(self, t: float) -> float:
        """Error of the last iterate reported by time t (the first one if none was)."""
        idx = np.searchsorted(self.times, t, side="right") - 1
        return self.errors[max(int(idx), 0)]


# ------------------------------------------------------------------ kernels

def onnx_conv_kernels(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, weight) of every Conv with a constant 4-D weight of spatial size > 1.

    A weight fed through an Identity of an initializer counts as constant. For a grouped
    Conv the first group's kernel (T/G, S/G, kh, kw) is taken; depthwise ones are skipped.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        name = node.input[1]
        name = alias.get(name, name)
        if name not in inits:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float64)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if w.ndim != 4 or w.shape[2] * w.shape[3] < 2 or w.shape[1] < 2:
            continue
        if group > 1:
            w = w[: w.shape[0] // group]
        label = node.name or name
        out.append((f"{path.stem}:{label}" + (f" (group 1 of {group})" if group > 1 else ""), w))
    out.sort(key=lambda item: -item[1].size)
    return out


def alexnet_like_kernels() -> list[tuple[str, np.ndarray]]:
    """Two synthetic kernels of AlexNet conv2's shape (256 x 48 x 5 x 5).

    * gaussian: i.i.d. N(0, 1/fan_in), i.e. a freshly initialized layer (no structure);
    * decaying: 400 rank-one terms of random unit vectors with weights 0.98^r, plus Gaussian
      noise of 5% of its norm: a spectrum that decays like a trained layer's but has no
      exact low rank.
    """
    shape = (256, 48, 5, 5)
    rng = np.random.default_rng(2015)
    gaussian = rng.standard_normal(shape) / np.sqrt(48 * 25)
    n_terms = 400
    factors = []
    for s in shape:
        f = rng.standard_normal((s, n_terms))
        factors.append(f / np.linalg.norm(f, axis=0))
    weights = 0.98 ** np.arange(n_terms)
    left = np.einsum("ir,jr->ijr", factors[0] * weights, factors[1]).reshape(-1, n_terms)
    right = np.einsum("kr,lr->klr", factors[2], factors[3]).reshape(-1, n_terms)
    clean = (left @ right.T).reshape(shape)
    noise = rng.standard_normal(shape)
    decaying = clean + 0.05 * np.linalg.norm(clean) * noise / np.linalg.norm(noise)
    return [("alexnet-conv2-shape gaussian", gaussian), ("alexnet-conv2-shape decaying", decaying)]


def build_cases(args) -> list[Case]:
    cases: list[Case] = []
    if args.quick:
        name, w = onnx_conv_kernels(NUDENET)[0]
        cases.append(Case(name, w, 32))
        name, w = alexnet_like_kernels()[0]
        cases.append(Case(name, w, 64))
    else:
        if NUDENET.exists():
            kernels = onnx_conv_kernels(NUDENET)
            kernels = [kw for kw in kernels if kw[1].shape[2:] == (3, 3)]
            for name, w in kernels[: None if args.all else 4]:
                for rank in (32, 64):
                    cases.append(Case(name, w, rank))
        else:
            print(f"{NUDENET} missing: run `python tools/fetch_assets.py nudenet`", file=sys.stderr)
        for name, w in alexnet_like_kernels():
            for rank in (200, 64) if not args.all else (200, 128, 64):
                cases.append(Case(name, w, rank))
        if CHARCNN.exists() and str(CHARCNN) not in map(str, args.kernels):
            args.kernels = [*args.kernels, CHARCNN]
    for path in args.kernels:
        kernels = onnx_conv_kernels(Path(path))
        if not kernels:
            print(f"{path}: no Conv with a constant kernel larger than 1x1", file=sys.stderr)
        for name, w in kernels[: None if args.all else 4]:
            for rank in (16, 32, 64) if args.all else (32, 64):
                cases.append(Case(name, w, rank))
    return cases


# ------------------------------------------------------------------ runs

def blas_limit(threads: int):
    """Limit BLAS to ``threads`` threads (0: leave as is)."""
    import contextlib

    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def run_als(kernel: np.ndarray, rank: int, init: str, iters: int, threads: int):
    from tensorly.decomposition import parafac

    trace = Trace()
    t0 = time.perf_counter()
    with warnings.catch_warnings(), blas_limit(threads):
        # tensorly warns that the SVD start has fewer vectors than the rank; that is expected.
        warnings.simplefilter("ignore", UserWarning)
        cp, _ = parafac(
            kernel, rank, n_iter_max=iters, init=init, tol=0, random_state=0,
            return_errors=True, callback=lambda _cp, err: trace.add(time.perf_counter() - t0, err),
        )
    return cp, trace


def run_case(case: Case, iters: int, als_threads: int) -> dict:
    k, r = case.kernel, case.rank
    als = {}
    for init in ("svd", "random"):
        cp, trace = run_als(k, r, init, iters, als_threads)
        als[init] = (cp, trace)
        print(f"    ALS {init:6s}: {trace.errors[-1]:.5f} after {len(trace.errors) - 1} sweeps, "
              f"{trace.times[-1]:.1f} s", flush=True)
    budget = max(t.times[-1] for _, t in als.values())
    nls_trace = Trace()
    fit = cp_nls(k, r, max_time=budget, max_iter=10**6, random_state=0,
                 callback=lambda s: nls_trace.add(s.elapsed, s.rel_error))
    print(f"    NLS       : {nls_trace.errors[-1]:.5f} after {len(nls_trace.errors) - 1} steps, "
          f"{nls_trace.times[-1]:.1f} s", flush=True)
    t0 = time.perf_counter()
    stable = cp_nls(k, r, init=fit, max_iter=0, stabilize=True)
    stab_time = time.perf_counter() - t0
    rows = []
    for init, (_, trace) in als.items():
        target = trace.errors[-1]
        t_hit = nls_trace.time_to(target)
        rows.append(dict(
            init=init, als_err=target, als_time=trace.times[-1], nls_time=t_hit,
            speedup=None if t_hit is None else trace.times[-1] / t_hit,
            nls_err_at_als_time=nls_trace.error_at(trace.times[-1]),
            # Equal time at every sweep, not only the last: sweeps after which ALS was below
            # everything cp_nls had reported by then.
            als_ahead=sum(e < nls_trace.error_by(t) for t, e in zip(trace.times, trace.errors)),
            als_err_at_nls_time=None if t_hit is None else trace.error_at(t_hit),
        ))
    deg_fit, deg_stable = degeneracy(fit), degeneracy(stable)
    err_fit, err_stable = relative_error(k, fit), relative_error(k, stable)
    print(f"    degeneracy: {deg_fit.measure:.3g} -> {deg_stable.measure:.3g} (stabilized), "
          f"error x{err_stable / err_fit:.4f}, {stab_time:.1f} s", flush=True)
    return dict(
        case=case, rows=rows, traces={"ALS svd": als["svd"][1], "ALS random": als["random"][1],
                                      "NLS": nls_trace},
        deg=dict(err_fit=err_fit, m_fit=deg_fit.measure, t_fit=deg_fit.max_term_norm,
                 err_stable=err_stable, m_stable=deg_stable.measure, t_stable=deg_stable.max_term_norm,
                 stab_time=stab_time, m_als=degeneracy(als["svd"][0]).measure),
    )


# ------------------------------------------------------------------ report

def fmt(x, spec, unit=""):
    return "not reached" if x is None else format(x, spec) + unit


def shape_str(a: np.ndarray) -> str:
    return "x".join(map(str, a.shape))


def tables(results: list[dict]) -> str:
    lines = [
        "| kernel | shape | R | ALS init | ALS err @ last sweep | ALS time (s) | NLS time to that err (s) "
        "| speed-up | NLS err @ ALS time | ALS err @ NLS time-to-target | ALS sweeps below NLS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        c = res["case"]
        for row in res["rows"]:
            lines.append(
                f"| {c.name} | {shape_str(c.kernel)} | {c.rank} | {row['init']} | {row['als_err']:.5f} "
                f"| {row['als_time']:.1f} | {fmt(row['nls_time'], '.2f')} | {fmt(row['speedup'], '.1f', 'x')} "
                f"| {row['nls_err_at_als_time']:.5f} | {fmt(row['als_err_at_nls_time'], '.5f')} "
                f"| {row['als_ahead']} of {len(res['traces']['ALS ' + row['init']].times)} |"
            )
    lines += [
        "",
        "| kernel | R | NLS err | measure | max term | stabilized err (ratio) | measure | max term "
        "| stabilize time (s) | ALS-svd measure |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        c, d = res["case"], res["deg"]
        lines.append(
            f"| {c.name} | {c.rank} | {d['err_fit']:.5f} | {d['m_fit']:.3g} | {d['t_fit']:.3g} "
            f"| {d['err_stable']:.5f} ({d['err_stable'] / d['err_fit']:.4f}x) | {d['m_stable']:.3g} "
            f"| {d['t_stable']:.3g} | {d['stab_time']:.1f} | {d['m_als']:.3g} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    styles = {"ALS svd": ("tab:blue", "-"), "ALS random": ("tab:orange", "--"), "NLS": ("tab:green", "-")}
    for ax, res in zip(axes.flat, results):
        c = res["case"]
        low, high = np.inf, 0.0
        for label, trace in res["traces"].items():
            color, ls = styles[label]
            t = np.maximum(np.asarray(trace.times), 1e-3)
            ax.plot(t, trace.errors, ls, color=color, label=label, lw=1.4)
            low = min(low, min(trace.errors))
            high = max(high, trace.errors[min(2, len(trace.errors) - 1)])
        for row in res["rows"]:
            ax.axhline(row["als_err"], color="gray", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(low - 0.05 * (high - low) - 1e-12, high + 0.05 * (high - low) + 1e-12)
        ax.set_xlabel("wall-clock time (s)")
        ax.set_ylabel("relative error")
        ax.set_title(f"{c.name}\n{shape_str(c.kernel)}, R={c.rank}", fontsize=8)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "unknown BLAS"
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            blas = (f"{info[0]['internal_api']} {info[0].get('version')} "
                    f"(default {info[0]['num_threads']} threads)")
    except ImportError:
        pass
    import tensorly

    return (f"{model}, {os.cpu_count()} cores, {blas}; Python {platform.python_version()}, "
            f"numpy {np.__version__}, tensorly {tensorly.__version__}")


def write_doc(text: str) -> None:
    if DOC.exists():
        doc = DOC.read_text()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
            return
        DOC.write_text(f"{doc.rstrip()}\n\n{BEGIN}\n{text}\n{END}\n")
        return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"# CP solver benchmark\n\n{BEGIN}\n{text}\n{END}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute), writes nothing")
    parser.add_argument("--all", action="store_true", help="more kernels and ranks")
    parser.add_argument("--kernels", action="append", default=[], metavar="MODEL.onnx",
                        help="add the largest Conv kernels of this model (repeatable)")
    parser.add_argument("--als-iters", type=int, default=None, help="ALS sweeps (default 200, 20 with --quick)")
    parser.add_argument("--als-threads", type=int, default=1,
                        help="BLAS threads for tensorly's ALS (default 1, its fastest here; 0: BLAS default)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    iters = args.als_iters or (20 if args.quick else 200)
    write = not (args.quick or args.no_write)

    command = "python tools/bench_solver.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    started = datetime.datetime.now()
    load_before = os.getloadavg()
    cases = build_cases(args)
    results = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.name} {shape_str(case.kernel)} R={case.rank}", flush=True)
        results.append(run_case(case, iters, args.als_threads))
    wall = (datetime.datetime.now() - started).total_seconds()
    load_after = os.getloadavg()

    body = tables(results)
    speedups = [r["speedup"] for res in results for r in res["rows"]]
    reached = [s for s in speedups if s is not None]
    below = sum(s < TARGET_SPEEDUP for s in reached) + len(speedups) - len(reached)
    worse_at_equal_time = sum(
        r["nls_err_at_als_time"] > r["als_err"] for res in results for r in res["rows"]
    )
    ever_worse = sum(r["als_ahead"] > 0 for res in results for r in res["rows"])
    summary = [
        f"Command: `{command}`  ",
        f"Date: {started:%Y-%m-%d %H:%M}, total {wall / 60:.1f} min  ",
        f"Machine: {machine()}  ",
        f"Load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}  ",
        f"ALS: tensorly parafac, {iters} sweeps, tol=0, BLAS threads: "
        f"{args.als_threads or 'default'}. NLS: cp_nls defaults (svd init, one BLAS thread), "
        "budget = the longer ALS run's time.",
        "",
        f"Speed-up of cp_nls to each ALS run's final error: min {fmt(min(reached, default=None), '.1f', 'x')}, "
        f"median {fmt(float(np.median(reached)) if reached else None, '.1f', 'x')}; below the "
        f"{TARGET_SPEEDUP:.0f}x target in {below} of {len(speedups)} comparisons (never reaching "
        f"the ALS error counts as below). cp_nls's error at ALS's finishing time was higher than "
        f"ALS's in {worse_at_equal_time} of {len(speedups)}; ALS was below cp_nls's error at the "
        f"same moment after at least one of its sweeps in {ever_worse} of {len(speedups)}.",
        "",
        body,
    ]
    text = "\n".join(summary)
    print()
    print(text)
    if write:
        plot(results, FIGURE)
        write_doc(text + f"\n\n![error vs time]({FIGURE.name})\n")
        print(f"\nwrote {DOC.relative_to(REPO)} and {FIGURE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""--decomposition auto with --target-speedup on real graphs: each command as a user types it.

    python tools/bench_auto.py [--only resnet50-auto2 resnet50-cp2 ...] [--out results.json]

Each case runs `onnx-cp rewrite ...` in a subprocess (its wall time end to end), then times the
input and the written model alternated in onnxruntime at 1 thread (medians of 20 runs each,
independently of the rewrite's own measurement), and measures the written model's output error
||f'(x) - f(x)|| / ||f(x)|| over every float output on 8 held-out synthetic images
(tools/calib_output_error.py's seeded "blocky" images, seed 1). It also counts the rewritten
layers by decomposition. The `-calib` cases pass `--calib calib.npy`: 64 blocky images (seed 0)
written beside the models, the command run there. ResNet-50 is the zoo graph with seeded random weights, written first by
tools/materialize_zoo.py (no download); nudenet needs `python tools/fetch_assets.py nudenet`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
NUDENET = ROOT / "assets" / "nudenet_320n.onnx"
NUDENET_SHAPE = ["--input-shape", "images=1x3x320x320"]
CALIB = "calib.npy"  # written into the work folder: 64 blocky images of the model's input shape, seed 0

SHAPES = {"images": (1, 3, 320, 320)}


def _nudenet(decomposition: str, target: str, goal: str, calib: bool = False) -> tuple:
    """A nudenet case; with ``calib`` the proxy and the fits see 64 calibration images and layer-wise
    recovery is off, so CP and auto compare their selections and fits alone."""
    extra = ["--decomposition", decomposition, "--target-speedup", target, *NUDENET_SHAPE]
    return NUDENET, extra + (["--calib", CALIB, "--no-recover"] if calib else []), SHAPES, goal


# name -> (model (None: the zoo ResNet-50), extra arguments, input shapes for timing, what the issue asks)
CASES = {
    "resnet50-auto2": (None, ["--decomposition", "auto", "--target-speedup", "2"], {}, ">= 1.8x at 1 thread"),
    "resnet50-cp2": (None, ["--decomposition", "cp", "--target-speedup", "2"], {}, "CP alone, for comparison"),
    "resnet50-cp1.9": (None, ["--decomposition", "cp", "--target-speedup", "1.9"], {}, "CP alone, near its reach"),
    "nudenet-auto3.5": _nudenet("auto", "3.5", ">= 3.3x at 1 thread"),
    "nudenet-auto2": _nudenet("auto", "2", "output error <= 0.85x CP-only's at the same speed-up"),
    "nudenet-cp2": _nudenet("cp", "2", "CP alone, for comparison"),
    "nudenet-auto1.8": _nudenet("auto", "1.8", "a lower target"),
    "nudenet-auto1.6": _nudenet("auto", "1.6", "a lower target"),
    "nudenet-cp1.6": _nudenet("cp", "1.6", "CP alone, for comparison"),
    "nudenet-auto2-calib": _nudenet("auto", "2", "output error <= 0.85x CP-only's at the same speed-up", True),
    "nudenet-auto1.8-calib": _nudenet("auto", "1.8", "output error against CP alone at the same speed-up", True),
    "nudenet-cp2-calib": _nudenet("cp", "2", "CP alone, for comparison", True),
    "nudenet-cp2.3-calib": _nudenet("cp", "2.3", "CP alone, for comparison", True),
}


def zoo_resnet50(workdir: Path) -> Path:
    path = workdir / "resnet50.onnx"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "materialize_zoo.py"), "resnet50", "-o", str(path)],
                       check=True, capture_output=True)
    return path


def run_case(name: str, workdir: Path) -> dict:
    model, extra, shapes, goal = CASES[name]
    model = zoo_resnet50(workdir) if model is None else model
    if not model.exists():
        return {"case": name, "skipped": f"{model.name} missing: python tools/fetch_assets.py"}
    out, report = workdir / f"{name}.onnx", workdir / f"{name}.json"
    if CALIB in extra:
        _calibration(model, shapes, workdir / CALIB)
    shown = "resnet50.onnx" if model.parent == workdir else str(model.relative_to(ROOT))
    command = ["onnx-cp", "rewrite", str(model), *extra, "-o", str(out), "--report", str(report)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir if CALIB in extra else ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    row = {"case": name, "goal": goal, "command": " ".join(["onnx-cp", "rewrite", shown, *extra, "-o", "r.onnx"]),
           "seconds": round(seconds, 1), "exit": done.returncode}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or [""])[-1]
        return row
    lines = done.stdout.strip().splitlines()
    row["closing_line"] = next((l for l in reversed(lines) if l.startswith("wrote")), lines[-1] if lines else "")
    data = json.loads(report.read_text())
    rewritten = [l for l in data["layers"] if l["status"] == "rewritten"]
    row["rewritten"] = dict(Counter(l.get("decomposition") or "cp" for l in rewritten))
    selection = data.get("rank_selection") or {}
    row["selection"] = {k: selection.get(k) for k in ("cost", "predicted_speedup", "output_error", "seconds")}
    if rewritten:
        row.update(_measure(model, out, shapes))
    return row


def _calibration(model: Path, shapes: dict, path: Path) -> None:
    from calib_output_error import blocky

    from onnx_cp.model_io import load_model
    from onnx_cp.calibrate.data import input_shape

    if not path.exists():
        np.save(path, blocky(64, input_shape(load_model(str(model)), shapes)[1], seed=0))


def _measure(model: Path, rewritten: Path, shapes: dict) -> dict:
    from calib_output_error import blocky

    from onnx_cp.bench import measure_latency
    from onnx_cp.model_io import load_model
    from onnx_cp.calibrate.data import input_shape
    from onnx_cp.ranks.proxy import output_error, run

    base, new = measure_latency([str(model), str(rewritten)], threads=1, warmup=3, runs=20, input_shapes=shapes)
    original = load_model(str(model))
    name, shape = input_shape(original, shapes)
    held = blocky(8, shape, seed=1)
    feeds = [{name: held[i:i + 1]} for i in range(len(held))]
    error = output_error(run(load_model(str(rewritten)), feeds, 2), run(original, feeds, 2))
    return {"original_ms": round(base.median, 3), "rewritten_ms": round(new.median, 3),
            "speedup_1_thread": round(base.median / new.median, 2), "output_error": round(error, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_shown(run_case(name, Path(tmp))) for name in args.only or CASES]
    table = ["| case | command | seconds | speed-up (1 thread) | output error | rewritten | result |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['case']} | `{r.get('command', '')}` | {r.get('seconds', '')} | {r.get('speedup_1_thread', '')} "
              f"| {r.get('output_error', '')} | {r.get('rewritten', '')} | "
              f"{r.get('skipped') or r.get('error') or r.get('closing_line', '')} |" for r in rows]
    print("\n" + "\n".join(table))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


def _shown(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())

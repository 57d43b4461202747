"""Scale-out, measured: data-parallel fine-tuning (--nproc) and the rank search shared through
optuna storage (--search-storage). The figures of docs/distributed.md.

    python tools/bench_distributed.py                          # both parts
    python tools/bench_distributed.py --part finetune --train-size 32000
    python tools/bench_distributed.py --part search

finetune: renders --train-size character crops (tools/charcnn/render.py, the 16 training fonts,
seed 7, nothing downloaded), then runs, for each --configs entry (default: --nproc 1 with torch's
own thread count, --nproc 1 --threads 1, --nproc 2; in that order, --repeats times),

    onnx-cp finetune models/charcnn36_cp.onnx --data <crops> --val models/charcnn36_test.npz
        --teacher models/charcnn36.onnx --epochs 1 --batch-size 128 --lr 0.001 --nproc N ...

and reads its --report: top-1 on models/charcnn36_test.npz (the 5 held-out fonts, onnxruntime)
after fine-tuning, world_size, training samples/s (the training loops only: all workers' samples
over rank 0's loop time) and the command's wall time.

search: rewrites models/charcnn36.onnx with --budget-macs, --calib models/charcnn36_test.npz and
--search 6 --search-storage sqlite:///<out>/study.db, once alone (study "alone"), then twice at
the same time on study "shared"; counts each study's trials (optuna.load_study).

Each command's stderr goes to <out>/<name>.log. Writes <out>/results.json and prints markdown
tables. Needs the finetune extra (torch, onnx2torch) and optuna.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # tools/charcnn, imported as a package
REPO = ROOT.parent
MODELS = REPO / "models"
CLI = [sys.executable, "-m", "onnx_cp.cli"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["finetune", "search", "both"], default="both")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "distributed")
    parser.add_argument("--train-size", type=int, default=32000, help="rendered training crops")
    parser.add_argument("--configs", default="1,1x1,2",
                        help="what to compare: N (--nproc N, default threads) or NxT (--nproc N --threads T)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count, alternating")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-macs", default="4e6", help="the search part's --budget-macs")
    parser.add_argument("--trials", type=int, default=6, help="the search part's --search")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": machine(), "load_before": load()}
    if args.part in ("finetune", "both"):
        facts["finetune"] = bench_finetune(args)
    if args.part in ("search", "both"):
        facts["search"] = bench_search(args)
    facts["load_after"] = load()
    (args.out / "results.json").write_text(json.dumps(facts, indent=2))
    print(render(facts))
    return 0


def bench_finetune(args) -> dict:
    data = args.out / f"train_{args.train_size}_s7.npz"
    if not data.exists():
        from charcnn import render as charcnn_render

        start = time.perf_counter()
        x, y = charcnn_render.render(args.train_size, 7)
        np.savez(data, x=x, y=y)
        print(f"rendered {args.train_size} crops in {time.perf_counter() - start:.0f} s", flush=True)
    configs = [tuple(int(v) for v in c.split("x")) + (None,) for c in args.configs.split(",")]
    runs = []
    for repeat in range(args.repeats):
        for nproc, threads, *_ in configs:
            name = f"finetune_n{nproc}" + (f"t{threads}" if threads else "") + f"_r{repeat}"
            command = CLI + ["finetune", str(MODELS / "charcnn36_cp.onnx"), "--data", str(data),
                             "--val", str(MODELS / "charcnn36_test.npz"), "--teacher", str(MODELS / "charcnn36.onnx"),
                             "--epochs", "1", "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                             "--seed", str(args.seed), "--nproc", str(nproc), "-q", "--overwrite",
                             "-o", str(args.out / f"{name}.onnx"), "--report", str(args.out / f"{name}.json")]
            command += ["--threads", str(threads)] if threads else []
            load_at_start = load()
            seconds = run(command, args.out / f"{name}.log")
            report = json.loads((args.out / f"{name}.json").read_text())
            inner = report["report"]
            runs.append({"nproc": nproc, "threads": threads, "repeat": repeat, "world_size": report["world_size"],
                         "top1": report["accuracy"]["after fine-tuning"]["top1"],
                         "top1_input": report["accuracy"]["after rewrite (input)"]["top1"],
                         "samples_per_second": inner["samples_per_second"], "samples": inner["samples"],
                         "train_seconds": inner["seconds"], "wall_seconds": seconds, "load_at_start": load_at_start,
                         "command": shown(command)})
            print(f"--nproc {nproc} --threads {threads or 'default'}: top-1 {runs[-1]['top1']:.2%}, {inner['samples_per_second']:.0f} samples/s, "
                  f"{seconds:.0f} s", flush=True)
    return {"train_size": args.train_size, "batch_size": args.batch_size, "lr": args.lr, "runs": runs}


def bench_search(args) -> dict:
    import optuna

    url = f"sqlite:///{args.out / 'study.db'}"
    for name in ("alone", "shared"):  # a fresh study each time
        try:
            optuna.delete_study(study_name=name, storage=url)
        except KeyError:
            pass

    def command(study: str, out: str) -> list[str]:
        return CLI + ["rewrite", str(MODELS / "charcnn36.onnx"), "-o", str(args.out / out), "--overwrite",
                      "--budget-macs", args.budget_macs, "--calib", str(MODELS / "charcnn36_test.npz"),
                      "--realize", "cp4", "--search", str(args.trials), "--search-storage", url,
                      "--study-name", study, "-q"]

    start = time.perf_counter()
    run(command("alone", "search_alone.onnx"), args.out / "search_alone.log")
    alone = {"seconds": time.perf_counter() - start, "trials": trials(optuna, url, "alone")}
    start = time.perf_counter()
    both = [subprocess.Popen(command("shared", f"search_shared{k}.onnx"), cwd=REPO,
                             stderr=open(args.out / f"search_shared{k}.log", "w")) for k in range(2)]
    codes = [p.wait() for p in both]
    if any(codes):
        raise SystemExit(f"a concurrent search failed ({codes}); see {args.out}/search_shared*.log")
    shared = {"seconds": time.perf_counter() - start, "trials": trials(optuna, url, "shared")}
    print(f"search: alone {alone['trials']}, two concurrent processes {shared['trials']}", flush=True)
    return {"trials_per_run": args.trials, "alone": alone, "shared": shared, "storage": url,
            "command": shown(command("shared", "search_shared0.onnx"))}


def trials(optuna, url: str, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=url)
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return {"count": len(study.trials), "states": states, "best": study.best_value}


def run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    if done.returncode:
        raise SystemExit(f"{shown(command)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    import onnxruntime
    import torch

    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def shown(command: list[str]) -> str:
    text = shlex.join(["onnx-cp", *command[len(CLI):]] if command[:len(CLI)] == CLI else command)
    return text.replace(f"{REPO}/", "")


def render(facts: dict) -> str:
    lines = [f"{facts['date']}, {facts['machine']['cores']} cores, load average (1/5/15 min) "
             f"{facts['load_before']} before, {facts['load_after']} after"]
    if "finetune" in facts:
        f = facts["finetune"]
        lines += ["", f"One epoch over {f['train_size']:,} rendered crops, batch {f['batch_size']}, lr {f['lr']}:", "",
                  "| --nproc | --threads | world_size | top-1 (held-out fonts) | training samples/s | command wall time "
                  "| load at start |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for r in f["runs"]:
            threads = r["threads"] or ("torch's default" if r["nproc"] == 1 else "default: cores / workers")
            lines.append(f"| {r['nproc']} | {threads} | {r['world_size']} | {r['top1']:.2%} | "
                         f"{r['samples_per_second']:.0f} | "
                         f"{r['wall_seconds']:.0f} s | {r['load_at_start']} |")
    if "search" in facts:
        s = facts["search"]
        lines += ["", f"--search {s['trials_per_run']} per process:", "",
                  "| study | processes | trials in the database | states | best output error | wall time |",
                  "|---|---:|---:|---|---:|---:|"]
        for name, procs in (("alone", 1), ("shared", 2)):
            t = s[name]["trials"]
            lines.append(f"| {name} | {procs} | {t['count']} | {t['states']} | {t['best']:.4f} | "
                         f"{s[name]['seconds']:.0f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

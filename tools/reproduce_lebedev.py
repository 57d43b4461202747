"""The paper's character-CNN experiment (Lebedev et al. 2015, section 5.1), end to end on a CPU.

    python tools/reproduce_lebedev.py                      # everything; the baseline is trained once
    python tools/reproduce_lebedev.py --stop-after train   # data and baseline only

1. data: 36-class character crops (0-9, A-Z, case-insensitive), 24 x 24 grey, rendered with the
   fonts that ship in matplotlib (tools/charcnn/render.py): a training set and a validation set
   from 16 fonts, a test set from 5 other fonts held out of training; cached under out/charcnn/.
2. baseline: the Jaderberg-style maxout CNN (tools/charcnn/model.py) trained from scratch with
   torch on the CPU, exported to models/charcnn36.onnx (skipped when out/charcnn/baseline.pt
   exists, unless --retrain). The test set is saved as models/charcnn36_test.npz.
3. for each --ranks setting: rewrite every eligible Conv with onnx-cp (onnx_cp.rewrite_with_report),
   fine-tune the whole rewritten network (onnx_cp.finetune: cross-entropy + distillation from the
   baseline), top-1 accuracy in onnxruntime on models/charcnn36_test.npz before the rewrite,
   after it and after fine-tuning.
4. once every model exists: onnxruntime CPU latency of the baseline and each fine-tuned model at
   1 thread, batch 1 and batch 64, in alternation (onnx_cp.bench.measure_latency), and a per-layer
   profile of the shipped one (onnx_cp.bench.run_bench).

Writes out/charcnn/results.json, models/charcnn36_cp.onnx (the --ship setting's fine-tuned model)
and docs/charcnn.md. Nothing is downloaded. Needs the finetune extra (torch, onnx2torch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # tools/charcnn, imported as a package
REPO = ROOT.parent

SPLITS = {  # name: (samples, seed, fonts)
    "train": (64000, 1, "train"),
    "val": (4000, 2, "train"),
    "test": (4000, 3, "test"),  # 4,000 keeps models/charcnn36_test.npz under 3 MB
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", action="append", default=None,
                        help="one rewrite setting: rank rules joined by ';', e.g. '16' or "
                             "'16;*features.0*=8' (later rules win), optionally after 'auto:', 'cp4:' or 'cp3:' "
                             "to override --realize (repeatable: one run each; default: 16)")
    parser.add_argument("--realize", default="auto", choices=["auto", "cp4", "cp3"])
    parser.add_argument("--ship", default="auto",
                        help="index of the --ranks setting saved as models/charcnn36_cp.onnx; auto: the fastest "
                             "at batch 1 of those within 1 point of the baseline, else the most accurate")
    parser.add_argument("--train-size", type=int, default=SPLITS["train"][0])
    parser.add_argument("--epochs", type=int, default=6, help="baseline training epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="baseline max learning rate (one-cycle)")
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--ft-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--distill-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--runs", type=int, default=400, help="timed runs per model at batch 1 (batch 64: /10)")
    parser.add_argument("--retrain", action="store_true", help="train the baseline even if one is cached")
    parser.add_argument("--refit", action="store_true",
                        help="rewrite and fine-tune every --ranks setting even if an earlier run left its model")
    parser.add_argument("--control", action="store_true",
                        help="also fine-tune the unmodified baseline with the same recipe, to show what the "
                             "extra training alone is worth")
    parser.add_argument("--stop-after", choices=["train", "finetune"], default=None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "out" / "charcnn")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "charcnn.md")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models",
                        help="where charcnn36.onnx, charcnn36_cp.onnx and charcnn36_test.npz go")
    args = parser.parse_args(argv)
    baseline, shipped, test_path = (args.models_dir / f"charcnn36{end}"
                                    for end in (".onnx", "_cp.onnx", "_test.npz"))
    args.baseline = baseline  # for rewrite_and_finetune
    settings = args.ranks or ["16"]

    import onnxruntime
    import torch

    from charcnn import render
    from onnx_cp.evaluate import evaluate, load_dataset

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    facts = _load(args.out_dir / "results.json")
    data = {}
    for name, (n, seed, fonts) in SPLITS.items():
        n = args.train_size if name == "train" else n
        data[name] = _split(args.out_dir / f"{name}_{n}_s{seed}.npz", n, seed,
                            render.TRAIN_FONTS if fonts == "train" else render.TEST_FONTS)
    if not test_path.exists():
        x, y = data["test"]
        # byte levels stored as float16 (onnx-cp reads float arrays): 2.7 MB instead of 9 MB
        np.savez_compressed(test_path, x=(np.round(x * 255) / 255).astype(np.float16), y=y.astype(np.int64))
    x_test, y_test = load_dataset(test_path)

    checkpoint = args.out_dir / "baseline.pt"
    if args.retrain or not checkpoint.exists():
        from charcnn.model import export
        from charcnn.train import accuracy, train

        print(f"training the baseline on {len(data['train'][0])} crops, {args.epochs} epochs...", flush=True)
        start = time.perf_counter()
        model, history = train(*data["train"], {"val": data["val"], "test": (x_test, y_test)},
                               epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               weight_decay=5e-4, seed=args.seed,
                               log=lambda s: print(s, flush=True))
        seconds = time.perf_counter() - start
        torch.save(model.state_dict(), checkpoint)
        export(model, baseline)
        facts["baseline"] = {
            "command": "python tools/reproduce_lebedev.py " + shlex.join(argv),
            "train_seconds": seconds, "history": history, "epochs": args.epochs, "lr": args.lr,
            "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed,
            "train_size": len(data["train"][0]), "torch_test_acc": accuracy(model, x_test, y_test),
            "load": list(os.getloadavg()), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        _save(args.out_dir / "results.json", facts)
    base_acc = evaluate(baseline, x_test, y_test)
    print(f"baseline {baseline.name}: top-1 {base_acc.top1:.2%} on {len(y_test)} held-out-font crops", flush=True)
    facts["baseline_acc"], facts["test_count"] = base_acc.top1, len(y_test)
    if args.stop_after == "train":
        _save(args.out_dir / "results.json", facts)
        return 0

    # An earlier invocation's run is reused only if it was fine-tuned with this recipe.
    done = {r["tag"]: r for r in facts.get("runs", [])
            if (REPO / r["tuned"]).exists() and r.get("recipe") == _recipe(args)}
    runs = []
    for setting in settings:
        if _tag(setting) in done and not args.refit:  # an earlier invocation's run; --refit to redo it
            print(f"ranks {setting}: reusing {done[_tag(setting)]['tuned']}", flush=True)
            runs.append(done[_tag(setting)])
        else:
            runs.append(rewrite_and_finetune(setting, args, data["train"], (x_test, y_test)))
    facts["runs"] = runs
    if args.control:
        facts["control"] = finetune_control(args, facts.get("control"), data["train"], (x_test, y_test))
    _save(args.out_dir / "results.json", facts)
    if args.stop_after == "finetune":
        return 0

    facts["timing"] = timing([baseline] + [REPO / r["tuned"] for r in runs], args.runs)
    facts["ship"] = _choose(runs, facts) if args.ship == "auto" else int(args.ship)
    shutil.copyfile(REPO / runs[facts["ship"]]["tuned"], shipped)
    facts["shipped_acc"] = evaluate(shipped, x_test, y_test).top1
    facts["per_layer"] = per_layer(baseline, shipped)
    facts.update({
        "command": "python tools/reproduce_lebedev.py " + shlex.join(argv),
        "args": {k: _shown(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "platform": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}, "
                    f"{os.cpu_count()} CPUs",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
    })
    _save(args.out_dir / "results.json", facts)
    if "baseline" in facts:
        args.doc.write_text(render_doc(facts))
    else:  # a baseline.pt left by another run, without its training record: the page needs that record
        print(f"{args.out_dir / 'results.json'} has no record of the baseline's training, so {args.doc} is "
              f"not written (--retrain trains and records it)", flush=True)
    for k, r in enumerate(runs, start=1):
        t = facts["timing"]
        print(f"ranks {r['ranks']}: speed-up batch 1 {t['1'][0]['median_ms'] / t['1'][k]['median_ms']:.2f}x, "
              f"batch 64 {t['64'][0]['median_ms'] / t['64'][k]['median_ms']:.2f}x; top-1 "
              f"{base_acc.top1:.2%} -> {r['acc_rewritten']:.2%} -> {r['acc_tuned']:.2%}", flush=True)
    print(f"wrote {args.out_dir / 'results.json'} and {shipped}" + (f" and {args.doc}" if "baseline" in facts else ""))
    return 0


def rewrite_and_finetune(setting: str, args, train_set, test_set) -> dict:
    """One --ranks setting: rewrite the baseline, fine-tune it, and top-1 after each step."""
    import onnx_cp
    from onnx_cp.evaluate import evaluate

    realize, _, spec = setting.rpartition(":")  # "auto:64": this setting's own --realize
    realize = realize or args.realize
    rules = tuple(int(r) if r.strip().isdigit() else r.strip() for r in spec.split(";"))
    tag = _tag(setting)
    cp_path, ft_path = args.out_dir / f"cp_{tag}.onnx", args.out_dir / f"cp_{tag}_ft.onnx"
    start = time.perf_counter()
    result = onnx_cp.rewrite_with_report(str(args.baseline),
                                         onnx_cp.RewriteConfig(ranks=rules, realize=realize))
    run = {"ranks": setting, "tag": tag, "cp": _shown(cp_path), "tuned": _shown(ft_path),
           "rewrite_seconds": time.perf_counter() - start, "totals": result.report.totals(),
           "layers": [{key: getattr(layer, attr) for key, attr in _LAYER_FIELDS.items()}
                      for layer in result.report.layers]}
    onnx_cp.save_model(result.model, cp_path, overwrite=True)
    run["acc_rewritten"] = evaluate(cp_path, *test_set).top1
    print(f"ranks {setting}: rewritten in {run['rewrite_seconds']:.0f} s: " + ", ".join(
        f"{_short(l['node'])} {l['form'] or l['status']}"
        + (f" r{l['rank']} err {l['rel_error']:.2f}" if l["rel_error"] is not None else "")
        for l in run["layers"]) + f"; top-1 {run['acc_rewritten']:.2%}", flush=True)

    tuned = _finetune(cp_path, ft_path, args, train_set, f"ranks {setting}")
    run.update(acc_tuned=evaluate(ft_path, *test_set).top1, finetune_seconds=tuned.report.seconds,
               recipe=_recipe(args), command="python tools/reproduce_lebedev.py " + shlex.join(sys.argv[1:]),
               epochs=[e.__dict__ for e in tuned.report.epochs], notes=tuned.report.notes)
    print(f"ranks {setting}: fine-tuned in {run['finetune_seconds']:.0f} s; top-1 {run['acc_tuned']:.2%}; "
          f"notes {run['notes']}", flush=True)
    return run


def finetune_control(args, cached: dict | None, train_set, test_set) -> dict:
    """The baseline itself through the same fine-tuning: the accuracy that the extra epochs
    alone give, the fair reference for the rewritten models' figures."""
    recipe = _recipe(args)
    path = args.out_dir / "control_ft.onnx"
    if cached and cached.get("recipe") == recipe and path.exists() and not args.refit:
        print(f"control: reusing {_shown(path)}", flush=True)
        return cached
    tuned = _finetune(args.baseline, path, args, train_set, "control")
    from onnx_cp.evaluate import evaluate

    run = {"recipe": recipe, "tuned": _shown(path), "acc_tuned": evaluate(path, *test_set).top1,
           "finetune_seconds": tuned.report.seconds, "command": "python tools/reproduce_lebedev.py "
           + shlex.join(sys.argv[1:])}
    print(f"control: the baseline fine-tuned the same way: top-1 {run['acc_tuned']:.2%}", flush=True)
    return run


def _recipe(args) -> dict:
    """What decides a fine-tuned model besides its starting point."""
    return {"ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr, "seed": args.seed, "batch_size": args.batch_size,
            "distill_weight": args.distill_weight, "temperature": args.temperature, "train_size": args.train_size}


def _finetune(model: Path, out: Path, args, train_set, label: str):
    import torch

    import onnx_cp
    from onnx_cp.finetune import finetune_with_report

    x, y = (torch.from_numpy(a) for a in train_set)
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size,
                                          shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    tuned = finetune_with_report(model, batches, epochs=args.ft_epochs, lr=args.ft_lr, teacher=args.baseline,
                                 seed=args.seed, temperature=args.temperature, distill_weight=args.distill_weight,
                                 device="cpu", callback=_Progress(label))
    onnx_cp.save_model(tuned.model, out, overwrite=True)
    return tuned


_LAYER_FIELDS = {"node": "node", "status": "status", "form": "realization", "rank": "rank",
                 "rel_error": "rel_error", "macs_before": "macs_before", "macs_after": "macs_after"}


class _Progress:
    """finetune's callback: a line at the end of each epoch and at most one a minute."""

    def __init__(self, label: str):
        self.label, self.last = label, 0.0

    def __call__(self, step) -> None:
        now = time.perf_counter()
        if step.batch == step.batches or now - self.last > 60:
            self.last = now
            print(f"  {self.label} epoch {step.epoch}/{step.epochs} batch {step.batch}/{step.batches}: "
                  f"loss {step.loss:.4f} train acc {step.accuracy:.2%}", flush=True)


def _choose(runs: list[dict], facts: dict) -> int:
    """--ship auto: the fastest (batch 1) run within 1 point of the baseline, else the most accurate."""
    latency = [s["median_ms"] for s in facts["timing"]["1"][1:]]
    close = [k for k, r in enumerate(runs) if facts["baseline_acc"] - r["acc_tuned"] <= 0.01]
    if close:
        return min(close, key=lambda k: latency[k])
    return max(range(len(runs)), key=lambda k: runs[k]["acc_tuned"])


def timing(models: list[Path], runs: int) -> dict:
    """Median latency at 1 thread, batch 1 and 64, all models alternating on the same inputs."""
    from onnx_cp.bench import measure_latency

    out = {"load_before": list(os.getloadavg())}
    for batch, n in ((1, runs), (64, max(runs // 10, 20))):
        print(f"timing batch {batch} ({n} runs per model, 1 thread)...", flush=True)
        stats = measure_latency(models, threads=1, batch=batch, warmup=max(n // 10, 10), runs=n)
        out[str(batch)] = [s.to_dict() for s in stats]
    out["load_after"] = list(os.getloadavg())
    return out


def per_layer(original: Path, rewritten: Path) -> dict:
    """Per-layer profile (batch 1 and 64, 1 thread): onnx-cp bench --per-node's markdown tables."""
    from onnx_cp.bench import BenchConfig, render_markdown, run_bench

    out = {}
    for batch, runs in ((1, 200), (64, 30)):
        print(f"per-layer profile, batch {batch}...", flush=True)
        report = run_bench([str(original), str(rewritten)], BenchConfig(threads=1, batch=batch, runs=runs),
                           per_node=True)
        out[str(batch)] = render_markdown(report)
    return out


def render_doc(facts: dict) -> str:
    """docs/charcnn.md: the paper's row beside ours, every figure with its command."""
    base, b = facts["baseline_acc"], facts["baseline"]
    t, a = facts["timing"], facts["args"]
    ship = facts["runs"][facts["ship"]]
    rows = []
    for k, r in enumerate(facts["runs"], start=1):
        s1 = t["1"][0]["median_ms"] / t["1"][k]["median_ms"]
        s64 = t["64"][0]["median_ms"] / t["64"][k]["median_ms"]
        forms = ", ".join(f"{_short(l['node'])}: {l['form']} r{l['rank']}" if l["form"] not in (None, "original")
                          else f"{_short(l['node'])}: original" for l in r["layers"])
        tot = r["totals"]
        rows.append(f"| ours, ranks `{r['ranks']}` | {forms} | {tot['conv_macs_before'] / 1e6:.2f} M -> "
                    f"{tot['conv_macs_after'] / 1e6:.2f} M | {base:.2%} | {r['acc_rewritten']:.2%} | "
                    f"{r['acc_tuned']:.2%} | {100 * (r['acc_tuned'] - base):+.2f} | "
                    f"{t['1'][0]['median_ms']:.3f} -> {t['1'][k]['median_ms']:.3f} ms (**{s1:.2f}x**) | "
                    f"{t['64'][0]['median_ms']:.2f} -> {t['64'][k]['median_ms']:.2f} ms (**{s64:.2f}x**) | "
                    f"{len(r['epochs'])} epochs, {r['finetune_seconds']:.0f} s |")
    control = facts.get("control")
    if control:
        c = control["recipe"]
        rows.append(f"| control: the baseline itself, fine-tuned the same way | original | "
                    f"{tot['conv_macs_before'] / 1e6:.2f} M | {base:.2%} | | {control['acc_tuned']:.2%} | "
                    f"{100 * (control['acc_tuned'] - base):+.2f} | (1.00x) | (1.00x) | "
                    f"{c['ft_epochs']} epochs, {control['finetune_seconds']:.0f} s |")
    control_note = "" if not control else (
        "- **control** (`--control`): the unmodified baseline through the same fine-tuning (same data, epochs,\n"
        "  learning rate, distillation from itself). It shows what the extra training alone is worth, so the\n"
        "  rewritten models' change in accuracy is not flattered by an under-trained baseline.\n"
        "  `onnx-cp finetune models/charcnn36.onnx --data out/charcnn/train_"
        f"{b['train_size']}_s1.npz --teacher models/charcnn36.onnx --epochs {control['recipe']['ft_epochs']} "
        f"--lr {control['recipe']['ft_lr']} --batch-size {a['batch_size']} --threads {a['threads']} "
        "-o out/charcnn/control_ft.onnx`\n")
    history = "\n".join(f"| {h['epoch']} | {h['loss']:.3f} | {h['train_acc']:.2%} | {h['val_acc']:.2%} | "
                         f"{h['test_acc']:.2%} | {h['seconds']:.0f} s |" for h in b["history"])
    spreads = [s["spread"] for batch in ("1", "64") for s in t[batch]]
    tag = ship["tag"]
    lines = ([b["command"]] + [r["command"] for r in facts["runs"] if r.get("command")]
             + ([control["command"]] if control else []) + [facts["command"]])
    commands = "\n".join(f"    {c}" for c in dict.fromkeys(lines))
    if len(dict.fromkeys(lines)) > 1:
        commands += ("\n\n(in this order: the first trains the baseline and renders the data; later ones reuse the "
                     "baseline (trained only when out/charcnn/baseline.pt is missing) and every --ranks setting "
                     "whose fine-tuned model an earlier one left, unless --retrain / --refit).")
    realize, _, spec = ship["ranks"].rpartition(":")
    rules = " ".join(f"--rank '{r}'" for r in spec.split(";")) + f" --realize {realize or a['realize']}"
    return f"""# The paper's character CNN: 36 classes, 24 x 24, four maxout conv layers

Lebedev et al. (ICLR 2015) rewrote the convolutions of Jaderberg et al.'s 36-class character
classifier as rank-R CP decompositions, fine-tuned, and reported an 8.5x whole-network CPU
speed-up for one point of accuracy (91% -> 90%). Their network and data (real crops from
ICDAR/SVT plus synthetic data) are not available here, so this reproduction builds both:
crops rendered from the fonts that ship in matplotlib (`tools/charcnn/render.py`; the test
fonts are held out of training) and a Jaderberg-style network (`tools/charcnn/model.py`:
conv 9x9 1->24x2, conv 9x9 24->64x2, conv 8x8 64->24x2, conv 1x1 24->36x4, maxout after
each, no pooling, no fully connected layer). Target: **at least 8.5x whole-network speed-up in
onnxruntime at 1 thread, at most 1 point of top-1 accuracy lost after fine-tuning**.

Every figure below came from (run from the repository root):

{commands}

| | form per layer | conv MACs / image | top-1 original | after rewrite | after fine-tuning | change (points) | latency batch 1 (speed-up) | latency batch 64 (speed-up) | fine-tuning |
|---|---|---|---:|---:|---:|---:|---|---|---:|
| paper (Caffe, CPU; their data) | CP on the conv layers | | 91% | | 90% | -1 | **8.5x** whole network | | |
{chr(10).join(rows)}

Shipped: `models/charcnn36.onnx` (the baseline) and `models/charcnn36_cp.onnx` (ranks
`{ship['ranks']}`, fine-tuned; {facts['shipped_acc']:.2%} on the test set). Test set:
`models/charcnn36_test.npz`, {facts.get('test_count', 4000)} crops in the 5 held-out fonts.

What each figure is, and the `onnx-cp` command that gives it (the tool calls the same Python API):

- **form per layer, conv MACs**: `onnx_cp.rewrite_with_report(models/charcnn36.onnx,
  RewriteConfig(ranks=..., realize=...))`, NLS fit; `realize="{a['realize']}"` unless the setting starts with
  `auto:` (or `cp3:` / `cp4:`). With `auto`, each layer's cp4 and cp3 forms are timed in place against the
  original Conv in onnxruntime (1 thread, batch 1) and the fastest is kept ("original" in the table: no CP
  form was faster). A rank whose CP form would cost more multiply-adds than the layer is capped.
  The 1x1 conv4 is not eligible and stays a Conv.
  `onnx-cp rewrite models/charcnn36.onnx {rules} -o out/charcnn/cp_{tag}.onnx`
- **top-1**: onnxruntime CPU EP on `models/charcnn36_test.npz`, `onnx_cp.evaluate`.
  `onnx-cp evaluate models/charcnn36.onnx --data models/charcnn36_test.npz` (likewise for
  `out/charcnn/cp_{tag}.onnx` and `models/charcnn36_cp.onnx`)
- **fine-tuning**: `onnx_cp.finetune`, the table's epochs over the {b['train_size']:,} training crops,
  batch {ship['recipe']['batch_size']}, Adam lr {ship['recipe']['ft_lr']} with cosine decay, loss = (1 - {ship['recipe']['distill_weight']}) cross-entropy +
  {ship['recipe']['distill_weight']} T^2 KL(teacher || model) at T = {ship['recipe']['temperature']}, the baseline as teacher; torch on the CPU,
  {a['threads']} threads, seed {ship['recipe']['seed']}. The time is the training loop's wall time.
  `onnx-cp finetune out/charcnn/cp_{tag}.onnx --data out/charcnn/train_{b['train_size']}_s1.npz --teacher models/charcnn36.onnx --epochs {len(ship['epochs'])} --lr {ship['recipe']['ft_lr']} --batch-size {ship['recipe']['batch_size']} --threads {a['threads']} -o out/charcnn/cp_{tag}_ft.onnx`
{control_note}- **latency**: median `session.run` wall time, onnxruntime {facts['versions']['onnxruntime']} CPU EP, 1 intra-op thread,
  graph optimization "all", the baseline and every fine-tuned model in alternation on the same
  random inputs ({a['runs']} timed runs at batch 1, {max(a['runs'] // 10, 20)} at batch 64), after all training had finished.
  `onnx-cp bench models/charcnn36.onnx models/charcnn36_cp.onnx --threads 1` (add `--batch 64`)

## The baseline

{b['train_size']:,} training crops (16 fonts), {b['epochs']} epochs, batch {b['batch_size']}, AdamW (max lr {b['lr']}, weight
decay 5e-4, one-cycle), cross-entropy, batch norm folded into the convs at export; torch on the
CPU, {b['threads']} threads, seed {b['seed']}: **{b['train_seconds'] / 60:.1f} minutes** of training (finished
{b['when']}; 1-minute load average {b['load'][0]:.1f} at the end: the 2 cores were shared). Validation:
4,000 crops in the training fonts; test: `models/charcnn36_test.npz` (held-out fonts), in torch.

| epoch | loss | train top-1 | val top-1 (train fonts) | test top-1 (held-out fonts) | time |
|---:|---:|---:|---:|---:|---:|
{history}

In onnxruntime, on `models/charcnn36_test.npz`: **{base:.2%}** top-1 (torch before export: {b['torch_test_acc']:.2%}).

## Per layer, shipped model (`onnx-cp bench models/charcnn36.onnx models/charcnn36_cp.onnx --per-node --threads 1`)

Profiler times (higher than plain latency); rewritten nodes, and whatever onnxruntime fused them
into, are counted under the original Conv.

### Batch 1

{_tables(facts['per_layer']['1'])}

### Batch 64

{_tables(facts['per_layer']['64'])}

Machine: {facts['platform']}; torch {facts['versions']['torch']}, onnxruntime
{facts['versions']['onnxruntime']}, numpy {facts['versions']['numpy']}. 1-minute load average
{t['load_before'][0]:.1f} before timing and {t['load_after'][0]:.1f} after (2 cores);
the largest relative spread (p90 - p10) / median of the latencies above is {max(spreads):.2f}.
Everything else (per-layer kernel error, fine-tuning epochs, latency percentiles):
`out/charcnn/results.json`.
"""


def _short(node: str) -> str:
    """'/features/features.3/Conv' -> 'conv2' (the model's convs in order)."""
    order = {"/features/features.0/Conv": "conv1", "/features/features.3/Conv": "conv2",
             "/features/features.6/Conv": "conv3", "/features/features.9/Conv": "conv4"}
    return order.get(node, node)


def _tables(markdown: str) -> str:
    """The tables of onnx-cp bench's markdown, headings one level down."""
    lines = markdown.replace(f"{REPO}/", "").splitlines()  # paths relative to the repository
    body = [line for line in lines[1:] if not line.startswith("# ")]
    return "\n".join("##" + line if line.startswith("## ") else line for line in body).strip()


def _split(path: Path, n: int, seed: int, fonts) -> tuple[np.ndarray, np.ndarray]:
    """Rendered crops, cached as .npz (x float32 N x 1 x 24 x 24, y int64)."""
    from charcnn import render

    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"]
    start = time.perf_counter()
    x, y = render.render(n, seed, fonts)
    np.savez(path, x=x, y=y)
    print(f"rendered {path.name}: {n} crops in {time.perf_counter() - start:.0f} s", flush=True)
    return x, y


def _tag(setting: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in setting).strip("_")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, facts: dict) -> None:
    path.write_text(json.dumps(facts, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

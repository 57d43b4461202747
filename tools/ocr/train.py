"""Train the CRNN recognizer with CTC on rendered lines (torch, CPU) and export it to ONNX.

    python tools/ocr/train.py --out models/crnn_ocr.onnx

1. data (tools/ocr/render.py): ``--train-size`` lines (seed 1) and 1,000 validation lines
   (seed 2) from the training fonts, ``--test-size`` test lines (seed 3) from the held-out fonts;
2. training (tools/ocr/model.py): AdamW with a one-cycle schedule, CTC loss plus a per-column
   cross-entropy on targets from the renderer's character positions (``--frame-weight``), batch
   normalization, convolutions under bfloat16 autocast (``--no-bf16`` for float32), seeded;
3. export: ONNX opset 17, dynamic batch, BatchNorm folded; exact-match and character accuracy
   of the exported model in onnxruntime on the test lines, next to torch's before export;
4. the test lines go to ``--test-out`` (default: the model's name + ``_test.npz``): ``x`` uint8
   N x 1 x 32 x 128 byte levels (the model takes x / 255 as float32), ``labels`` the strings,
   ``charset`` the classes after the blank. A JSON summary goes next to the model's training
   log in ``--work``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))  # tools/ocr and tools/charcnn, imported as packages

from ocr.ctc import greedy_decode, scores  # noqa: E402
from ocr.model import CHARSET, CRNN, WIDTH, export  # noqa: E402
from ocr.recognizers import read_lines, recognizer  # noqa: E402
from ocr.render import TEST_FONTS, TRAIN_FONTS, Lines, render_lines, to_float  # noqa: E402


def predict_torch(model, x: np.ndarray, batch: int = 250) -> list[str]:
    import torch

    model.eval()
    texts: list[str] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            log_probs = model(torch.from_numpy(to_float(x[i:i + batch])))
            texts += greedy_decode(log_probs.argmax(-1).numpy(), CHARSET)
    return texts


def encode(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CTC targets: concatenated class indices (1-based) and per-line lengths."""
    flat = np.array([CHARSET.index(c) + 1 for t in labels for c in t], np.int64)
    return flat, np.array([len(t) for t in labels], np.int64)


def frame_targets(labels: list[str], centers: list[np.ndarray], steps: int) -> np.ndarray:
    """Per-column targets, T x N: a character's class on the columns within a quarter of its width
    of its center (at least the nearest column), the blank elsewhere. Column t sees x = 4t + 2."""
    stride = WIDTH / steps
    mid = np.arange(steps) * stride + stride / 2
    out = np.zeros((steps, len(labels)), np.int64)
    for n, (text, layout) in enumerate(zip(labels, centers)):
        for c, (cx, w) in zip(text, layout):
            cols = np.abs(mid - cx) <= max(w / 4, stride / 2)
            cols[int(np.clip(np.round((cx - stride / 2) / stride), 0, steps - 1))] = True
            out[cols, n] = CHARSET.index(c) + 1
    return out


def train(lines: Lines, val: Lines, *, epochs: int, lr: float, batch_size: int, weight_decay: float,
          frame_weight: float, seed: int, bf16: bool, log=print) -> tuple[CRNN, list[dict]]:
    """CTC loss plus ``frame_weight`` times a per-column cross-entropy (frame_targets) that gets
    training past CTC's all-blank start in a few hundred steps."""
    import torch
    from torch import nn

    x, labels, centers = lines

    torch.manual_seed(seed)
    model = CRNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = len(x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.1)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    gen = np.random.default_rng(seed)
    history, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order, loss_sum, seen = gen.permutation(len(x)), 0.0, 0
        for b in range(per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb = torch.from_numpy(to_float(x[idx]))
            targets, lengths = encode([labels[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                features = model.features(xb)
            log_probs = model.classify(features.float())
            steps = torch.full((len(idx),), log_probs.shape[0], dtype=torch.int64)
            ctc_loss = ctc(log_probs, torch.from_numpy(targets), steps, torch.from_numpy(lengths))
            frames = torch.from_numpy(frame_targets([labels[i] for i in idx], [centers[i] for i in idx],
                                                    log_probs.shape[0]))
            frame_loss = nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), frames.reshape(-1))
            loss = ctc_loss + frame_weight * frame_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            if (b + 1) % 50 == 0:
                log(f"  epoch {epoch} batch {b + 1}/{per_epoch}: loss {loss_sum / seen:.4f} (last: ctc "
                    f"{ctc_loss.item():.3f} frames {frame_loss.item():.3f}; {time.perf_counter() - start:.0f} s)")
        exact, chars = scores(predict_torch(model, val.x), val.texts)
        stats = {"epoch": epoch, "loss": loss_sum / seen, "val_exact": exact, "val_chars": chars,
                 "elapsed_s": time.perf_counter() - start}
        history.append(stats)
        log(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k != "epoch"))
    model.eval()
    return model, history


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the ONNX model to write")
    parser.add_argument("--test-out", type=Path, default=None, help="default: <out stem>_test.npz")
    parser.add_argument("--work", type=Path, default=TOOLS.parent / "out" / "ocr", help="log and summary")
    parser.add_argument("--train-size", type=int, default=22400)
    parser.add_argument("--test-size", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="max learning rate (one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--frame-weight", type=float, default=1.0, help="weight of the per-column loss")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="train the convolutions in float32 (default: bfloat16 autocast)")
    args = parser.parse_args(argv)

    import onnx
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    log_file = open(args.work / "train.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    log(f"$ python tools/ocr/train.py {' '.join(argv)}")
    t0 = time.perf_counter()
    lines = render_lines(args.train_size, seed=1, fonts=TRAIN_FONTS)
    val = render_lines(1000, seed=2, fonts=TRAIN_FONTS)
    x_test, y_test, _ = render_lines(args.test_size, seed=3, fonts=TEST_FONTS)
    render_s = time.perf_counter() - t0
    log(f"rendered {args.train_size} + 1000 + {args.test_size} lines in {render_s:.0f} s")

    t1 = time.perf_counter()
    model, history = train(lines, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           weight_decay=args.weight_decay, frame_weight=args.frame_weight, seed=args.seed,
                           bf16=args.bf16, log=log)
    train_s = time.perf_counter() - t1
    torch_scores = scores(predict_torch(model, x_test), y_test)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    export(model, args.out)
    onnx.checker.check_model(onnx.load(args.out), full_check=True)
    onnx_scores = scores(read_lines(args.out, recognizer(args.out), x_test, threads=args.threads), y_test)
    test_out = args.test_out or args.out.with_name(args.out.stem + "_test.npz")
    np.savez_compressed(test_out, x=x_test, labels=np.array(y_test), charset=np.array(CHARSET))

    summary = {
        "command": "python tools/ocr/train.py " + " ".join(argv), "train_fonts": list(TRAIN_FONTS),
        "test_fonts": list(TEST_FONTS), "render_s": render_s, "train_s": train_s, "history": history,
        "test_torch": {"exact": torch_scores[0], "chars": torch_scores[1]},
        "test_onnx": {"exact": onnx_scores[0], "chars": onnx_scores[1]},
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(model.state_dict(), args.work / "crnn.pt")
    log(f"test ({len(y_test)} lines, held-out fonts): torch exact {torch_scores[0]:.2%} chars {torch_scores[1]:.2%}; "
        f"onnxruntime exact {onnx_scores[0]:.2%} chars {onnx_scores[1]:.2%}")
    log(f"training {train_s:.0f} s; wrote {args.out} and {test_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

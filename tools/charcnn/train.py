"""Train the character CNN from scratch on rendered data (torch, CPU)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from charcnn.model import CharCNN


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            hits += int((model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return hits / len(x)


def train(x: np.ndarray, y: np.ndarray, val: dict[str, tuple[np.ndarray, np.ndarray]], *, epochs: int,
          lr: float, batch_size: int, weight_decay: float, seed: int, log=print) -> tuple[CharCNN, list[dict]]:
    """AdamW with a one-cycle schedule and cross-entropy; per epoch, accuracy on each ``val`` split."""
    torch.manual_seed(seed)
    model = CharCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start, order = time.perf_counter(), gen.permutation(len(x))
        loss_sum = hits = seen = 0
        last = start
        for b in range(len(x) // batch_size):
            idx = torch.from_numpy(order[b * batch_size:(b + 1) * batch_size])
            xb, yb = xt[idx], yt[idx]
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss) * len(yb)
            hits += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            if time.perf_counter() - last > 60:
                last = time.perf_counter()
                log(f"  epoch {epoch} batch {b + 1}/{len(x) // batch_size}: loss {loss_sum / seen:.4f} "
                    f"train acc {hits / seen:.2%}")
        seconds = time.perf_counter() - start
        stats = {"epoch": epoch, "loss": loss_sum / seen, "train_acc": hits / seen, "seconds": seconds}
        stats.update({f"{name}_acc": accuracy(model, *data) for name, data in val.items()})
        history.append(stats)
        log(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k != "epoch"))
    model.eval()
    return model, history

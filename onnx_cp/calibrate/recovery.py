"""Layer-wise recovery: train one layer's factors and bias, whatever its decomposition, on real
activations.

The realized chain is fed the patches its layer reads in the already-rewritten model and matched
to the original model's output there, after the activation that follows (asymmetric
reconstruction, Zhang et al. 2015; block reconstruction as in AdaRound / BRECQ). First the last
stage and the bias by least squares where the decomposition has such a stage (exact for it:
CP's last 1x1), then Adam on every factor in torch when torch is importable, through the
decomposition's own ``outputs``; without torch the least-squares step alone runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from onnx_cp.calibrate.follow import Activation
from onnx_cp.decompositions import Decomposition

Factors = tuple[np.ndarray, ...]  # one group's factors, as its decomposition holds them
# Called as callback(step, steps) during training; returning True stops it.
Callback = Callable[[int, int], bool]


@dataclass(frozen=True)
class RecoveryOptions:
    steps: int = 300  # Adam steps at most
    batch: int = 1024  # patches per Adam step
    lr: float = 1e-2  # per tensor, relative to the tensor's root-mean-square entry
    max_time: float | None = None  # seconds for this layer's training
    seed: int = 0
    threads: int = 1
    use_torch: bool = True
    block: int = 2  # also train on the output of up to this many following Convs (0: off)
    block_samples: int = 8192  # output pixels of that Conv sampled for it


@dataclass(frozen=True)
class Pairs:
    """Patches (M, C, kh, kw) the layer reads and the original layer's outputs (M, T) there,
    before the activation."""

    patches: np.ndarray
    targets: np.ndarray

    def split(self, hold: np.ndarray) -> tuple["Pairs", "Pairs"]:
        """(the rest, the rows in ``hold``)."""
        keep = np.setdiff1d(np.arange(len(self.targets)), hold)
        return Pairs(self.patches[keep], self.targets[keep]), Pairs(self.patches[hold], self.targets[hold])


@dataclass(frozen=True)
class Recovered:
    factors: tuple[Factors, ...]  # per group
    bias: np.ndarray  # (T,)
    error_before: float  # on held-back pairs, after the activation, relative
    error_after: float
    method: str  # adam | least-squares | unchanged
    steps: int
    seconds: float


def chain_outputs(decomposition: Decomposition, patches: np.ndarray, factors: Sequence[Factors],
                  bias: np.ndarray | None) -> np.ndarray:
    """What the realized chain outputs (M, T) for the patches, its bias included."""
    y = decomposition.outputs(patches, factors, np)
    return y if bias is None else y + bias


def output_error(pairs: Pairs, decomposition: Decomposition, factors: Sequence[Factors], bias: np.ndarray | None,
                 act: Activation) -> float:
    """||act(chain(patches)) - act(targets)|| / ||act(targets)||."""
    want = act.numpy(pairs.targets.astype(np.float64))
    got = act.numpy(chain_outputs(decomposition, pairs.patches, factors, bias))
    norm = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / norm if norm else float(np.linalg.norm(got))


def recover(train: Pairs, held: Pairs, decomposition: Decomposition, factors: Sequence[Factors],
            bias: np.ndarray | None, act: Activation, options: RecoveryOptions,
            callback: Callback | None = None) -> Recovered:
    """The layer's chain trained on ``train``; errors measured on ``held``."""
    start = time.perf_counter()
    factors = [tuple(np.asarray(f, dtype=np.float64) for f in g) for g in factors]
    bias = np.zeros(train.targets.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)

    def error(pairs: Pairs, fs, b) -> float:
        return output_error(pairs, decomposition, fs, b, act)

    before = error(held, factors, bias)
    best, best_loss, method, steps = (factors, bias), error(train, factors, bias), "unchanged", 0
    solved = decomposition.solve_last(train.patches, train.targets, factors)
    if solved is not None:
        loss = error(train, *solved)
        if loss < best_loss:
            best, best_loss, method = solved, loss, "least-squares"
    torch = _torch() if options.use_torch else None
    if torch is not None and options.steps > 0:
        left = None if options.max_time is None else options.max_time - (time.perf_counter() - start)
        trained, steps = _adam(torch, train, decomposition, *best, act, options, left, callback)
        loss = error(train, *trained)
        if loss < best_loss:
            best, best_loss, method = trained, loss, "adam"
    after = error(held, *best)
    return Recovered(tuple(tuple(g) for g in best[0]), best[1], before, after, method, steps,
                     time.perf_counter() - start)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _adam(torch, train: Pairs, decomposition: Decomposition, factors, bias, act: Activation,
          options: RecoveryOptions, max_time: float | None, callback: Callback | None):
    """Adam on every factor and the bias, minibatches of patches, cosine-decayed steps."""
    start = time.perf_counter()
    torch.set_num_threads(options.threads)
    gen = torch.Generator().manual_seed(options.seed)
    patches = torch.from_numpy(np.ascontiguousarray(train.patches, dtype=np.float32))  # (M, C, kh, kw)
    want = act.torch(torch.from_numpy(train.targets.astype(np.float32)))
    scale = float(want.pow(2).mean()) or 1.0
    params = [[torch.tensor(f, dtype=torch.float32, requires_grad=True) for f in g] for g in factors]
    b = torch.tensor(bias, dtype=torch.float32, requires_grad=True)
    tensors = [t for g in params for t in g] + [b]
    rms = [float(t.detach().pow(2).mean().sqrt()) or 1.0 for t in tensors[:-1]]
    rms.append(float(want.abs().mean()) or 1.0)
    optimizer = torch.optim.Adam([{"params": [t], "lr": options.lr * r} for t, r in zip(tensors, rms)])
    base = [group["lr"] for group in optimizer.param_groups]
    size = min(options.batch, len(patches))
    steps = 0
    for step in range(options.steps):
        if max_time is not None and time.perf_counter() - start > max_time:
            break
        pick = torch.randint(len(patches), (size,), generator=gen)
        got = act.torch(decomposition.outputs(patches[pick], params, torch) + b)
        loss = (got - want[pick]).pow(2).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / options.steps))
        optimizer.step()
        steps = step + 1
        if callback is not None and callback(steps, options.steps):
            break
    trained = [tuple(t.detach().double().numpy() for t in g) for g in params]
    return (trained, b.detach().double().numpy()), steps

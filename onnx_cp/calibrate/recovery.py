"""Layer-wise recovery: train one layer's CP chain (factors and bias) on real activations.

The chain is fed the patches its layer reads in the already-rewritten model and matched to the
original model's output there, after the activation that follows (asymmetric reconstruction,
Zhang et al. 2015; block reconstruction as in AdaRound / BRECQ). First the last 1x1 stage and
the bias by least squares (exact for that stage), then Adam on all four stages in torch when
torch is importable; without torch the least-squares step alone runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from onnx_cp.calibrate.follow import Activation
from onnx_cp.calibrate.patches import cp_outputs

Factors = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # Ut (T,R), Us (S,R), Uy (kh,R), Ux (kw,R)
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


def output_error(pairs: Pairs, factors: Sequence[Factors], bias: np.ndarray | None, act: Activation) -> float:
    """||act(chain(patches)) - act(targets)|| / ||act(targets)||."""
    want = act.numpy(pairs.targets.astype(np.float64))
    got = act.numpy(cp_outputs(pairs.patches, factors, bias))
    norm = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / norm if norm else float(np.linalg.norm(got))


def recover(train: Pairs, held: Pairs, factors: Sequence[Factors], bias: np.ndarray | None, act: Activation,
            options: RecoveryOptions, callback: Callback | None = None) -> Recovered:
    """The layer's chain trained on ``train``; errors measured on ``held``."""
    start = time.perf_counter()
    factors = [tuple(np.asarray(f, dtype=np.float64) for f in g) for g in factors]
    bias = np.zeros(train.targets.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    before = output_error(held, factors, bias, act)
    best, best_loss, method, steps = (factors, bias), output_error(train, factors, bias, act), "unchanged", 0
    solved = least_squares_last(train, factors)
    loss = output_error(train, *solved, act)
    if loss < best_loss:
        best, best_loss, method = solved, loss, "least-squares"
    torch = _torch() if options.use_torch else None
    if torch is not None and options.steps > 0:
        left = None if options.max_time is None else options.max_time - (time.perf_counter() - start)
        trained, steps = _adam(torch, train, *best, act, options, left, callback)
        loss = output_error(train, *trained, act)
        if loss < best_loss:
            best, best_loss, method = trained, loss, "adam"
    after = output_error(held, *best, act)
    return Recovered(tuple(tuple(g) for g in best[0]), best[1], before, after, method, steps,
                     time.perf_counter() - start)


def features(patches: np.ndarray, group: Factors) -> np.ndarray:
    """The R channels (M, R) that the chain's first three stages make of one group's patches."""
    _, us, uy, ux = group
    return np.einsum("msyx,sr,yr,xr->mr", patches.astype(np.float64), us, uy, ux, optimize=True)


def least_squares_last(train: Pairs, factors: Sequence[Factors]) -> tuple[list[Factors], np.ndarray]:
    """The last stage (Ut) and bias that best map the first stages' channels to the targets
    (a lightly ridged least squares per group, before the activation)."""
    groups = len(factors)
    per_in, per_out = train.patches.shape[1] // groups, train.targets.shape[1] // groups
    out, biases = [], []
    for g, group in enumerate(factors):
        z = features(train.patches[:, g * per_in:(g + 1) * per_in], group)
        design = np.concatenate([z, np.ones((len(z), 1))], axis=1)
        gram = design.T @ design
        gram += np.eye(len(gram)) * 1e-8 * max(float(np.trace(gram)) / len(gram), 1e-30)
        target = train.targets[:, g * per_out:(g + 1) * per_out].astype(np.float64)
        solution = np.linalg.solve(gram, design.T @ target)  # (R + 1, T/G)
        out.append((solution[:-1].T.copy(), *group[1:]))
        biases.append(solution[-1])
    return out, np.concatenate(biases)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _adam(torch, train: Pairs, factors, bias, act: Activation, options: RecoveryOptions,
          max_time: float | None, callback: Callback | None):
    """Adam on every factor and the bias, minibatches of patches, cosine-decayed steps."""
    start = time.perf_counter()
    torch.set_num_threads(options.threads)
    gen = torch.Generator().manual_seed(options.seed)
    per_in = train.patches.shape[1] // len(factors)
    patches = torch.from_numpy(np.ascontiguousarray(train.patches, dtype=np.float32))
    patches = patches.reshape(len(patches), patches.shape[1], -1)  # (M, C, kh*kw)
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
        got = act.torch(_chain(torch, patches[pick], params, b, per_in))
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


def _chain(torch, patches, params, bias, per_in: int):
    """The CP chain on flattened patches (B, C, kh*kw) in torch."""
    outs = []
    for g, (ut, us, uy, ux) in enumerate(params):
        p = patches[:, g * per_in:(g + 1) * per_in]
        spatial = (uy[:, None, :] * ux[None, :, :]).reshape(-1, us.shape[1])  # (kh*kw, R)
        z = (torch.einsum("bsk,sr->bkr", p, us) * spatial).sum(1)
        outs.append(z @ ut.T)
    return torch.cat(outs, dim=1) + bias

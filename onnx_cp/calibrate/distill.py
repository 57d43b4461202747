"""Whole-model distillation after layer-wise recovery (``RewriteConfig.distill_epochs``).

Layer-wise recovery matches each rewritten layer's own output; the errors that are left add up
along the network, and on a CTC recognizer they pile up where the sequence is read. This step
trains the rewritten layers' weights together, through the whole network, so that the model's
outputs match the input model's on the calibration samples (normalized squared error on every
output, Adam with a cosine decay, in torch through onnx2torch).

Only the rewritten layers' weights train, so the graph stays exactly as spliced: the trained
values are read back by initializer name and set into it (``transplant``), and the layers given
back later keep theirs. Whether the result is kept is the caller's decision, on held-back samples.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_cp.progress import Progress

# Adam's rate: the factors start near their optimum (recovery put them there). On two CTC
# recognizers 3e-4 raised the held-back output error and 1e-4 lowered it (docs/results/calibration.md).
LEARNING_RATE = 1e-4
BATCH = 16
# An epoch whose mean training loss ends above this many times the first batch's stops the
# training: it has moved far from recovery's optimum on its own samples, and the decaying rate does
# not bring it back within the epochs left. On a trained VGG-16's Tucker-2 rewrites (64 images) at
# 1e-4: in one, the 10 epochs took the held-back error from 0.0418 to 0.1910 in 220 s, not kept; in
# another, the first epoch's mean was 117x the first batch's (0.212 against 0.00181). A CRNN's
# first epoch reaches 3.2x its first batch and the training goes on to a model kept (held-back
# error 0.0395 -> 0.0356), so the bound is well above that.
DIVERGED = 10.0


@dataclass(frozen=True)
class DistillOptions:
    epochs: int  # RewriteConfig.distill_epochs
    max_time: float | None  # seconds of training, whole epochs or not
    lr: float = LEARNING_RATE
    batch: int = BATCH
    seed: int = 0


@dataclass
class DistillResult:
    """The trained weights by initializer name, and how the training went."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    first_loss: float | None = None  # the first batch's
    diverged_loss: float | None = None  # the epoch mean that stopped the training (DIVERGED), if one did


def distill_layers(teacher: onnx.ModelProto, student: onnx.ModelProto, nodes: Iterable[str], x: np.ndarray,
                   options: DistillOptions, progress: Progress | None = None) -> DistillResult:
    """Train the weights of ``student``'s ``nodes`` so its outputs on ``x`` match ``teacher``'s.

    Raises OnnxCpError when torch or onnx2torch is missing or cannot import a model.
    """
    from onnx_cp.finetune import finetune_with_report
    from onnx_cp.finetune._deps import require_torch

    require_torch()  # the finetune extra's one-line refusal, before any torch call
    nodes = set(nodes)
    batches = [x[i:i + options.batch] for i in range(0, len(x), options.batch)]
    total = options.epochs * len(batches)
    begin = time.perf_counter()
    result = DistillResult()

    def on_step(step) -> bool:
        if step.phase != "train":
            return False
        result.steps += 1
        if progress:
            progress(f"epoch {step.epoch}/{step.epochs}, loss {step.loss:.4g}", result.steps, total)
        if result.first_loss is None:
            result.first_loss = step.loss
        if step.batch == step.batches and step.loss > DIVERGED * result.first_loss:
            result.diverged_loss = step.loss
            return True
        return options.max_time is not None and time.perf_counter() - begin > options.max_time

    with _all_cores():
        tuned = finetune_with_report(student, batches, teacher=teacher, epochs=options.epochs, lr=options.lr,
                                     seed=options.seed, device="cpu", class_axes={"*": None}, callback=on_step,
                                     train_only=nodes)
    result.epochs = len(tuned.report.epochs)
    result.seconds = time.perf_counter() - begin
    wanted = {i for n in student.graph.node if n.name in nodes for i in n.input}
    result.weights = {t.name: numpy_helper.to_array(t) for t in tuned.model.graph.initializer if t.name in wanted}
    return result


@contextmanager
def _all_cores():
    """torch on every core this process may use for the block (layer-wise recovery sets one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transplant(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``weights`` (of the same shape) hold those values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, tensor in enumerate(out.graph.initializer):
        value = weights.get(tensor.name)
        if value is not None and tuple(tensor.dims) == value.shape:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            out.graph.initializer[k].CopyFrom(numpy_helper.from_array(value.astype(dtype), tensor.name))
    return out

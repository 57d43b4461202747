"""The training loop: Adam (AdamW with weight decay) and a cosine decay over every step, cross-entropy on
labels and/or distillation, running figures for the callback, and a stop any worker may ask for."""
from __future__ import annotations

import math
import time

from onnx_cp.errors import OnnxCpError
from onnx_cp.finetune.batches import batch_count, split_batch
from onnx_cp.finetune.config import FinetuneConfig
from onnx_cp.finetune.convert import first_output, output_list
from onnx_cp.finetune.distributed import anyone, data_parallel, summed
from onnx_cp.finetune.report import EpochStats, FinetuneReport, Step
from onnx_cp.finetune.teacher import Distiller


def train_epochs(student, teacher: Distiller | None, loader, val_loader, config: FinetuneConfig, dev, callback,
                 report: FinetuneReport) -> None:
    """Train ``student`` for ``config.epochs`` epochs (or until the callback stops it), recording every
    step and epoch in ``report``."""
    import torch
    import torch.nn.functional as F

    batches = batch_count(loader)
    trainee = data_parallel(student, dev)  # student itself outside a torch.distributed group
    sampler = getattr(loader, "sampler", None)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise OnnxCpError("the converted model has no trainable parameters; nothing to fine-tune")
    optimizer = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
                 if config.weight_decay else torch.optim.Adam(params, lr=config.lr))
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * batches)
                if batches else None)
    t, w = config.temperature, config.distill_weight
    count = len(report.outputs)  # distilled outputs
    training_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)  # a DistributedSampler's shuffle, the same on every worker
        trainee.train()
        start, total, correct, labelled, seen, done = time.perf_counter(), 0.0, 0, 0, 0, 0
        per_output = [0.0] * count  # distillation loss of each output, summed over samples
        stop = False
        for batch in loader:
            x, y = split_batch(batch)
            x = x.to(dev, non_blocking=True)
            outputs = output_list(trainee(x))
            logits = outputs[0]
            losses = []
            if y is not None:
                y = y.to(dev, non_blocking=True).long()
                if logits.ndim != 2:
                    raise OnnxCpError(f"labels need the model's first output to be N x C class logits, but it "
                                      f"is {tuple(logits.shape)}; leave out the labels (y) and distill from a "
                                      "teacher")
                losses.append((1.0 - w if teacher is not None else 1.0, F.cross_entropy(logits, y)))
            if teacher is not None:
                parts = teacher.losses(outputs, x, t, position=done)
                for k, part in enumerate(parts):
                    per_output[k] += float(part.detach()) * len(x)
                losses.append((w if y is not None else 1.0, sum(parts) / len(parts)))
            loss = sum(weight * value for weight, value in losses)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                if not bool(torch.isfinite(x).all()):
                    raise OnnxCpError(f"the training batch at epoch {epoch}, batch {done + 1} holds NaN or "
                                      "infinite inputs; remove them from the data")
                raise OnnxCpError(f"the loss became {value} at epoch {epoch}, batch {done + 1}; "
                                  f"lower the learning rate (now {config.lr})")
            n = len(x)
            total, seen, done = total + value * n, seen + n, done + 1
            if y is not None:
                correct += int((logits.detach().argmax(1) == y).sum())
                labelled += n
            report.steps += 1
            step = Step("train", epoch, config.epochs, done, batches, total / seen,
                        correct / labelled if labelled else None, None, optimizer.param_groups[0]["lr"])
            if anyone(callback is not None and callback(step), dev):
                stop = True
                break
        training_seconds += time.perf_counter() - start
        total, seen, correct, labelled, *per_output = summed([total, seen, correct, labelled, *per_output],
                                                             dev)  # the whole group's
        seen, correct, labelled = int(seen), int(correct), int(labelled)
        report.samples += seen
        val = top1_accuracy(student, val_loader, dev) if val_loader is not None else None
        report.epochs.append(EpochStats(epoch, total / max(seen, 1), correct / labelled if labelled else None,
                                        val, time.perf_counter() - start,
                                        {o.name: v / max(seen, 1) for o, v in zip(report.outputs, per_output)}))
        report.samples_per_second = report.samples / training_seconds if training_seconds > 0 else 0.0
        if callback is not None and val_loader is not None:
            stop = bool(callback(Step("val", epoch, config.epochs, done, batches, total / max(seen, 1),
                                      correct / labelled if labelled else None, val,
                                      optimizer.param_groups[0]["lr"]))) or stop
        stop = anyone(stop, dev)
        if stop:
            report.stopped_early = epoch < config.epochs or done != batches
            break


def top1_accuracy(module, loader, dev) -> float | None:
    import torch

    module.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in loader:
            x, y = split_batch(batch)
            if y is None:
                return None
            pred = first_output(module(x.to(dev))).argmax(1).cpu()
            correct += int((pred == y.long()).sum())
            seen += len(y)
    correct, seen = summed([correct, seen], dev)  # every worker's share
    return correct / seen if seen else None

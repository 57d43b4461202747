"""Fine-tune a rewritten model end to end in torch, then export it back to ONNX.

    tuned = finetune("fast.onnx", loader, epochs=3, lr=1e-3, teacher="orig.onnx")

The whole network trains (every CP factor, bias and the layers around them) with cross-entropy
on the labels (of the first output, N x C class logits); with a teacher, also with distillation
over every output the two models share (``onnx_cp.finetune.distill``: KL of temperature-softened
distributions along a class axis, given or detected from the shape, or normalized MSE for other
heads); batches without labels use distillation alone. Adam with a cosine learning-rate decay
over all steps.

Before training, the untrained module is exported once and checked: same operators as the
input, same outputs in onnxruntime. So a model that would lose its CP structure or its
numerics on the way back fails in seconds, not after the epochs.

Inside a torch.distributed group (``onnx_cp.finetune.distributed``: ``onnx-cp finetune --nproc``,
or torchrun) every worker calls ``finetune`` with its own share of the batches (a
DistributedSampler, whose ``set_epoch`` is called each epoch): the module trains through
DistributedDataParallel, the report's figures are the whole group's, and a stop asked by the
callback on any worker stops all of them. Every worker must see the same number of batches.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import onnx

from onnx_cp.errors import Message, OnnxCpError, param
from onnx_cp.finetune._deps import require_torch
from onnx_cp.finetune.distributed import anyone, current_world, data_parallel, pick_device, summed
from onnx_cp.finetune.convert import (
    ExportNotes,
    first_output,
    fit_batch,
    max_difference,
    output_list,
    structure_changes,
    to_onnx,
    to_torch,
)
from onnx_cp.finetune.distill import OutputLoss, normalize_class_axes, output_loss, plan_losses, softmax_outputs
from onnx_cp.model_io import load_model

FINETUNE_METADATA_KEY = "onnx_cp_finetune"
# Exported vs torch outputs must agree within ATOL + RTOL * max|output|, plus twice what float32
# rounding alone moves the outputs (measured against float64) when that is more.
RTOL, ATOL = 1e-3, 1e-4
_CHECK_SAMPLES = 8


@dataclass(frozen=True)
class FinetuneConfig:
    """How to train. Validated on construction, shared by the CLI and the Python API.

    temperature: softens both logit sets before the KL divergence (Hinton et al.).
    distill_weight: with labels and a teacher, loss = (1 - w) * CE + w * distillation.
    device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when torch sees it, else the CPU.
    class_axes: per output name (or "*" for every output), the class axis of its KL loss, or None
    for normalized MSE; outputs not named get the shape rule (``onnx_cp.finetune.distill``).
    A mapping is accepted and stored as sorted (name, axis) pairs.
    """

    epochs: int = 3
    lr: float = 1e-3
    temperature: float = 4.0
    distill_weight: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    device: str | None = None
    class_axes: tuple[tuple[str, int | None], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "class_axes", normalize_class_axes(self.class_axes))
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise OnnxCpError(f"{param('epochs')} must be at least 1, got {self.epochs}", usage=True)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OnnxCpError(f"{param('lr')} must be positive, got {self.lr}", usage=True)
        if not self.temperature > 0:
            raise OnnxCpError(f"{param('temperature')} must be positive, got {self.temperature}", usage=True)
        if not 0.0 <= self.distill_weight <= 1.0:
            raise OnnxCpError(f"{param('distill_weight')} must lie in [0, 1], got {self.distill_weight}", usage=True)
        if self.weight_decay < 0:
            raise OnnxCpError(f"{param('weight_decay')} must be at least 0, got {self.weight_decay}", usage=True)


@dataclass(frozen=True)
class Step:
    """What the callback sees: after every training batch (phase "train") and after each
    epoch's validation (phase "val"). Loss and accuracy are running means over the epoch."""

    phase: str
    epoch: int  # 1-based
    epochs: int
    batch: int  # batches done in this epoch
    batches: int | None  # batches per epoch (None: the loader has no len)
    loss: float
    accuracy: float | None  # training top-1 (None: the batches have no labels)
    val_accuracy: float | None
    lr: float


# Return True to stop training after this step; the model is still exported.
Callback = Callable[[Step], Any]


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float | None
    val_accuracy: float | None
    seconds: float
    distillation: dict[str, float] = field(default_factory=dict)  # output -> mean loss over the epoch


@dataclass
class DistilledOutput:
    """One output's distillation: its loss, why that loss, and its value on the check batch (the
    first training batch, at most 8 samples, in eval mode) before and after training."""

    name: str
    loss: str  # "kl(axis=1)" or "mse"
    rule: str
    before: float
    after: float | None = None


@dataclass
class FinetuneReport:
    """What happened: per-epoch figures, the export check, and anything carried over imperfectly."""

    config: FinetuneConfig
    device: str
    epochs: list[EpochStats] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0  # training only (epochs, validation included)
    world_size: int = 1  # data-parallel workers (torch.distributed)
    samples: int = 0  # training samples seen by all workers together
    samples_per_second: float = 0.0  # samples over the training loops' time (validation excluded)
    stopped_early: bool = False
    labelled: bool = False  # trained on labels (cross-entropy)
    distilled: bool = False  # trained on the teacher's outputs
    outputs: list[DistilledOutput] = field(default_factory=list)  # per distilled output
    export_difference: float = 0.0  # max |onnxruntime - torch| of the exported model on a batch
    structure: dict[str, int] = field(default_factory=dict)  # operator count changes vs the input
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["config"] = asdict(self.config)
        return data


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    report: FinetuneReport


def finetune(model, loader: Iterable, *, epochs: int, lr: float, teacher=None, val_loader: Iterable | None = None,
             seed: int = 0, device: str | None = None, callback: Callback | None = None,
             temperature: float = 4.0, distill_weight: float = 0.5, weight_decay: float = 0.0,
             class_axes=()) -> onnx.ModelProto:
    """Train ``model`` (an ONNX model or path) on ``loader``'s batches; return it as ONNX.

    ``loader`` yields ``(x, y)`` (images and integer labels) or ``x`` alone (then ``teacher`` is
    needed); it is iterated once per epoch (a DataLoader or a list of batches; without a
    ``len`` the learning rate stays constant instead of decaying). ``teacher`` (ONNX model, path,
    or torch module) adds distillation over every output the two share (by name; by position
    when no name is shared), ``class_axes`` chooses each output's loss (FinetuneConfig).
    ``val_loader`` gives the per-epoch validation accuracy that the callback sees. The result
    has the input's input/output names, dynamic dimensions and metadata, and its operators.
    """
    return finetune_with_report(model, loader, epochs=epochs, lr=lr, teacher=teacher, val_loader=val_loader,
                                seed=seed, device=device, callback=callback, temperature=temperature,
                                distill_weight=distill_weight, weight_decay=weight_decay,
                                class_axes=class_axes).model


def finetune_with_report(model, loader: Iterable, *, teacher=None, val_loader: Iterable | None = None,
                         callback: Callback | None = None, **settings) -> FinetuneResult:
    """Like ``finetune``, and also say what happened (``settings`` are FinetuneConfig's fields)."""
    config = FinetuneConfig(**settings)
    with warnings.catch_warnings():
        # onnx2torch's Slice indexes with a list, which torch deprecates on every forward pass.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                                category=UserWarning)
        return _finetune(config, model, loader, teacher, val_loader, callback)


def _finetune(config: FinetuneConfig, model, loader, teacher, val_loader, callback) -> FinetuneResult:
    torch, _ = require_torch()
    source = load_model(model)
    world = current_world()
    dev = pick_device(config.device, world)
    report = FinetuneReport(config, str(dev), world_size=world.size)
    with _deterministic(torch, config.seed):
        x0, y0 = _first_batch(loader)
        x0 = x0[:_CHECK_SAMPLES]
        student = to_torch(source, example=fit_batch(source, x0).numpy())
        _precheck(source, student, x0, report)
        student.to(dev)
        if teacher is None and y0 is None:
            raise OnnxCpError("the training batches have no labels and no teacher is given; "
                              "pass labels (x, y) or a teacher to distill from")
        distiller = _teacher(teacher, dev, x0, student, source, config, report) if teacher is not None else None
        report.distilled, report.labelled = distiller is not None, y0 is not None
        start = time.perf_counter()
        _train(student, distiller, loader, val_loader, config, dev, callback, report)
        report.seconds = time.perf_counter() - start
        if distiller is not None:
            for out, value in zip(report.outputs, distiller.check(student, x0, dev, config.temperature)):
                out.after = value
    student.eval()
    export_notes = ExportNotes()
    tuned = to_onnx(student, source, example=x0, notes=export_notes)
    diff, scale, ok = _agreement(tuned, student, fit_batch(tuned, x0), report, "the fine-tuned model")
    report.export_difference = diff
    if not ok:
        raise OnnxCpError(f"the exported model differs from the trained torch module by {diff:.3g} (outputs up "
                          f"to {scale:.3g}), more than float32 rounding explains; onnx2torch or the exporter "
                          "mishandled an operator")
    report.structure = structure_changes(source, tuned)
    _note_structure(report)
    report.notes.extend(export_notes.metadata)
    if export_notes.unmatched:
        report.notes.append(f"{len(export_notes.unmatched)} node(s) kept exported names, e.g. "
                            f"{export_notes.unmatched[:3]}")
    kept = [p for p in tuned.metadata_props if p.key != FINETUNE_METADATA_KEY]  # an earlier fine-tuning's
    del tuned.metadata_props[:]
    tuned.metadata_props.extend(kept)
    tuned.metadata_props.add(key=FINETUNE_METADATA_KEY, value=json.dumps(_provenance(report)))
    return FinetuneResult(tuned, report)


def _precheck(source: onnx.ModelProto, student, x0, report: FinetuneReport) -> None:
    """Export the untrained module once: refuse before training if structure or outputs change."""
    trial = to_onnx(student, source, example=x0)
    changes = structure_changes(source, trial)
    if changes.get("Conv", 0):
        raise OnnxCpError(f"exporting the converted model changes its Conv count by {changes['Conv']:+d} "
                          f"(all changes: {changes}); fine-tuning would lose the CP structure")
    diff, scale, ok = _agreement(source, student, fit_batch(source, x0), report, "the input model")
    if not ok:
        raise OnnxCpError(f"onnx2torch's module differs from the model in onnxruntime by {diff:.3g} (outputs up "
                          f"to {scale:.3g}) before any training, more than float32 rounding explains; an "
                          "operator converts wrongly")


def _agreement(model: onnx.ModelProto, module, x, report: FinetuneReport, what: str):
    """(max |onnxruntime - torch|, max |output|, whether that difference is acceptable).

    A model whose CP factors are degenerate (huge terms that cancel) computes its outputs with
    large float32 rounding error, in onnxruntime and torch alike; such a model passes when the
    two agree within twice that error, and the report says how unstable it is.
    """
    diff, scale = max_difference(model, module, x)
    allowed = ATOL + RTOL * scale
    if diff <= allowed:
        return diff, scale, True
    noise = _rounding_error(module, x)
    if noise > allowed:
        report.notes.append(Message(
            f"{what} is numerically unstable in float32: rounding alone moves its outputs by up to {noise:.3g} "
            f"(outputs up to {scale:.3g}); its CP factors are probably degenerate: rewrite with "
            f"{param('stabilize', repr('always'), cli='always')} or a lower rank"))
    return diff, scale, diff <= allowed + 2 * noise


def _rounding_error(module, x) -> float:
    """max |float32 output - float64 output| of the module on batch ``x``, over all outputs."""
    import copy

    import torch

    wide = copy.deepcopy(module).double().eval()
    dev = next((t.device for t in module.parameters()), torch.device("cpu"))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            narrow = output_list(module(torch.as_tensor(x).to(dev)))
            exact = output_list(wide(torch.as_tensor(x).to(dev).double()))
    finally:
        module.train(was_training)
    return max(float((a.double() - b).abs().max()) for a, b in zip(narrow, exact))


def _note_structure(report: FinetuneReport) -> None:
    if report.structure:
        added = {op: d for op, d in report.structure.items() if d > 0}
        removed = {op: -d for op, d in report.structure.items() if d < 0}
        parts = ([f"added {added}"] if added else []) + ([f"removed {removed}"] if removed else [])
        report.notes.append("the exported graph's operators differ from the input's: " + "; ".join(parts))


def _train(student, teacher: _Distiller | None, loader, val_loader, config: FinetuneConfig, dev, callback,
           report) -> None:
    import torch
    import torch.nn.functional as F

    batches = _len(loader)
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
            x, y = _split(batch)
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
                parts = teacher.losses(outputs, x, t)
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
        val = _accuracy(student, val_loader, dev) if val_loader is not None else None
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


def _accuracy(module, loader, dev) -> float | None:
    import torch

    module.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in loader:
            x, y = _split(batch)
            if y is None:
                return None
            pred = first_output(module(x.to(dev))).argmax(1).cpu()
            correct += int((pred == y.long()).sum())
            seen += len(y)
    correct, seen = summed([correct, seen], dev)  # every worker's share
    return correct / seen if seen else None


@dataclass
class _Distiller:
    """The teacher and what to distill: student output ``i`` against teacher output ``j`` for
    each pair, with the loss ``plan`` gives."""

    module: Any
    count: int | None  # the teacher's number of outputs (None: a torch module, as many as it returns)
    pairs: list[tuple[int, int]]
    plan: list[OutputLoss]

    def losses(self, student_outputs: list, x, temperature: float) -> list:
        import torch

        with torch.no_grad():
            targets = output_list(self.module(x), self.count)
        return [output_loss(spec, student_outputs[i], targets[j], temperature)
                for spec, (i, j) in zip(self.plan, self.pairs)]

    def check(self, student, x0, dev, temperature: float) -> list[float]:
        """Each output's loss on ``x0`` with the student in eval mode (the report's before/after)."""
        import torch

        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                x = x0.to(dev)
                return [float(v) for v in self.losses(output_list(student(x)), x, temperature)]
        finally:
            student.train(was_training)


def _teacher(teacher, dev, x0, student, source: onnx.ModelProto, config: FinetuneConfig,
             report: FinetuneReport) -> _Distiller:
    """Convert the teacher, pair its outputs with the student's, and choose each output's loss."""
    import torch

    if isinstance(teacher, torch.nn.Module):
        module, names, probabilities = teacher, None, set()
    else:
        teacher_model = load_model(teacher)
        module = to_torch(teacher_model, what="the teacher", example=fit_batch(teacher_model, x0).numpy())
        names = [o.name for o in teacher_model.graph.output]
        probabilities = softmax_outputs(teacher_model)
    module = module.to(dev).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    student_names = [o.name for o in source.graph.output]
    with torch.no_grad():
        t_outs = output_list(module(x0.to(dev)), len(names) if names is not None else None)
        s_outs = output_list(student.eval()(x0.to(dev)), len(student_names))
    pairs = _pair_outputs(student_names, names, len(t_outs))
    for i, j in pairs:
        if t_outs[j].shape != s_outs[i].shape:
            raise OnnxCpError(f"the teacher outputs {tuple(t_outs[j].shape)} but the model {tuple(s_outs[i].shape)} "
                              f"for output {student_names[i]!r} on the same batch; distill from the model that "
                              "was rewritten")
    plan = plan_losses([(student_names[i], tuple(s_outs[i].shape)) for i, _ in pairs], dict(config.class_axes),
                       teacher_probabilities={student_names[i] for i, j in pairs
                                              if names is not None and names[j] in probabilities},
                       student_probabilities=softmax_outputs(source))
    distiller = _Distiller(module, len(names) if names is not None else None, pairs, plan)
    before = distiller.check(student, x0, dev, config.temperature)
    report.outputs = [DistilledOutput(spec.name, spec.label, spec.rule, value) for spec, value in zip(plan, before)]
    left = [name for k, name in enumerate(student_names) if k not in {i for i, _ in pairs}]
    if left:
        report.notes.append(f"output(s) {left} not distilled: the teacher has no output of that name")
    return distiller


def _pair_outputs(student: list[str], teacher: list[str] | None, teacher_count: int) -> list[tuple[int, int]]:
    """(student index, teacher index) of the outputs to distill: those of the same name, or all of
    them by position when the teacher has no names (a torch module) or shares none."""
    if teacher is not None:
        shared = [(i, teacher.index(name)) for i, name in enumerate(student) if name in teacher]
        if shared:
            return shared
    if teacher_count == len(student):
        return [(k, k) for k in range(len(student))]
    raise OnnxCpError(f"the teacher's {teacher_count} outputs {teacher or ''} share no name with the model's "
                      f"{student}; distill from the model that was rewritten")


def _first_batch(loader):
    if iter(loader) is loader:
        raise OnnxCpError("the loader is a one-pass iterator; pass something that can be iterated once per "
                          "epoch, such as a torch DataLoader or a list of batches")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise OnnxCpError("the training loader yields no batches; pass at least one sample") from None
    x, y = _split(batch)
    return x.detach().cpu(), y


def _split(batch):
    """(x, y or None) from a tensor, an (x,) / (x, y, ...) tuple or list, or a numpy array."""
    import torch

    if isinstance(batch, (tuple, list)):
        if not batch:
            raise OnnxCpError("the loader yielded an empty batch; yield x or (x, y)")
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        x, y = batch, None
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        raise OnnxCpError(f"the loader yields images of dtype {x.dtype}; scale them to float the way "
                          "the model expects (e.g. x.float() / 255)")
    if y is not None:
        y = torch.as_tensor(y)
        if torch.is_floating_point(y) or y.ndim != 1:
            raise OnnxCpError(f"the loader yields labels of dtype {y.dtype} and shape {tuple(y.shape)}; "
                              "yield one integer class index per image")
    return x.float(), y


def _len(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


class _deterministic:
    """Seed torch and make cuDNN deterministic for the block; restore cuDNN's flags after."""

    def __init__(self, torch, seed: int):
        self.torch, self.seed = torch, seed

    def __enter__(self):
        backends = self.torch.backends.cudnn
        self.saved = (backends.deterministic, backends.benchmark)
        backends.deterministic, backends.benchmark = True, False
        self.torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        backends = self.torch.backends.cudnn
        backends.deterministic, backends.benchmark = self.saved
        return False


def _provenance(report: FinetuneReport) -> dict:
    c = report.config
    return {"version": 1, "epochs": len(report.epochs), "steps": report.steps, "lr": c.lr, "seed": c.seed,
            "distilled": report.distilled, "temperature": c.temperature if report.distilled else None,
            "distill_weight": c.distill_weight if report.distilled else None,
            "distill_losses": {o.name: o.loss for o in report.outputs} if report.distilled else None,
            "weight_decay": c.weight_decay, "device": report.device, "world_size": report.world_size,
            "seconds": round(report.seconds, 1),
            "val_accuracy": report.epochs[-1].val_accuracy if report.epochs else None}

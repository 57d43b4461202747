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
import time
import warnings
from typing import Iterable

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.finetune._deps import require_torch
from onnx_cp.finetune.batches import first_batch
from onnx_cp.finetune.config import FinetuneConfig
from onnx_cp.finetune.convert import ExportNotes, fit_batch, structure_changes, to_onnx, to_torch
from onnx_cp.finetune.distributed import current_world, pick_device
from onnx_cp.finetune.export_check import agreement, note_structure, precheck
from onnx_cp.finetune.loop import train_epochs
from onnx_cp.finetune.names import module_names
from onnx_cp.finetune.normalize import normalize
from onnx_cp.finetune.report import Callback, FinetuneReport, FinetuneResult
from onnx_cp.finetune.teacher import distiller_for
from onnx_cp.model_io import load_model

FINETUNE_METADATA_KEY = "onnx_cp_finetune"
_CHECK_SAMPLES = 8


def finetune(model, loader: Iterable, *, epochs: int, lr: float, teacher=None, val_loader: Iterable | None = None,
             seed: int = 0, device: str | None = None, callback: Callback | None = None,
             temperature: float = 4.0, distill_weight: float = 0.5, weight_decay: float = 0.0,
             class_axes=()) -> onnx.ModelProto:
    """Train ``model`` (an ONNX model or path) on ``loader``'s batches; return it as ONNX.

    ``loader`` yields ``(x, y)`` (images and integer labels) or ``x`` alone (then ``teacher`` is
    needed); it is iterated once per epoch (a DataLoader or a list of batches; without a
    ``len`` the learning rate stays constant instead of decaying; from a list or tuple, the same
    batches each epoch, the teacher's outputs are computed in the first epoch only, up to 2 GiB of
    them). ``teacher`` (ONNX model, path,
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
                         callback: Callback | None = None, train_only: Iterable[str] | None = None,
                         **settings) -> FinetuneResult:
    """Like ``finetune``, and also say what happened (``settings`` are FinetuneConfig's fields).
    ``train_only``: names of the ONNX nodes whose weights train; every other weight stays as it is."""
    config = FinetuneConfig(**settings)
    with warnings.catch_warnings():
        # onnx2torch's Slice indexes with a list, which torch deprecates on every forward pass.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                                category=UserWarning)
        return _finetune(config, model, loader, teacher, val_loader, callback, train_only)


def _finetune(config: FinetuneConfig, model, loader, teacher, val_loader, callback, train_only) -> FinetuneResult:
    torch, _ = require_torch()
    source = load_model(model)
    world = current_world()
    dev = pick_device(config.device, world)
    report = FinetuneReport(config, str(dev), world_size=world.size)
    with _deterministic(torch, config.seed):
        x0, y0 = first_batch(loader)
        x0 = x0[:_CHECK_SAMPLES]
        student = to_torch(source, example=fit_batch(source, x0).numpy())
        precheck(source, student, x0, report)
        if train_only is not None:
            freeze_all_but(student, source, set(train_only))
        student.to(dev)
        if teacher is None and y0 is None:
            raise OnnxCpError("the training batches have no labels and no teacher is given; "
                              "pass labels (x, y) or a teacher to distill from")
        distiller = distiller_for(teacher, dev, x0, student, source, config, report) if teacher is not None else None
        if distiller is not None and isinstance(loader, (list, tuple)):
            distiller.cache = {}  # the same batches every epoch: the teacher's outputs are computed once
        report.distilled, report.labelled = distiller is not None, y0 is not None
        start = time.perf_counter()
        train_epochs(student, distiller, loader, val_loader, config, dev, callback, report)
        report.seconds = time.perf_counter() - start
        if distiller is not None:
            for out, value in zip(report.outputs, distiller.check(student, x0, dev, config.temperature)):
                out.after = value
            report.notes.extend(_farther(report))
    student.eval()
    export_notes = ExportNotes()
    tuned = to_onnx(student, source, example=x0, notes=export_notes)
    diff, scale, ok = agreement(tuned, student, fit_batch(tuned, x0), report, "the fine-tuned model")
    report.export_difference = diff
    if not ok:
        raise OnnxCpError(f"the exported model differs from the trained torch module by {diff:.3g} (outputs up "
                          f"to {scale:.3g}), more than float32 rounding explains; onnx2torch or the exporter "
                          "mishandled an operator")
    report.structure = structure_changes(source, tuned)
    note_structure(report)
    report.notes.extend(export_notes.metadata)
    if export_notes.unmatched:
        report.notes.append(f"{len(export_notes.unmatched)} node(s) kept exported names, e.g. "
                            f"{export_notes.unmatched[:3]}")
    kept = [p for p in tuned.metadata_props if p.key != FINETUNE_METADATA_KEY]  # an earlier fine-tuning's
    del tuned.metadata_props[:]
    tuned.metadata_props.extend(kept)
    tuned.metadata_props.add(key=FINETUNE_METADATA_KEY, value=json.dumps(_provenance(report)))
    return FinetuneResult(tuned, report)


def freeze_all_but(student, source: onnx.ModelProto, nodes: set[str]) -> None:
    """Stop the gradient of every parameter but those of the submodules converted from ``nodes``."""
    graph = normalize(source).graph
    kept = {module for node, module in zip(graph.node, module_names(graph)) if node.name in nodes}
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name.rpartition(".")[0] in kept)


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


def _farther(report: FinetuneReport) -> list[str]:
    """A note per output that ends farther from the teacher than it began, on the batch the check
    runs on (a batch it trained on): with no labels, that is training gone wrong (on a CTC
    recognizer, KL at temperature 4 and rate 1e-3 left it reading nothing)."""
    if report.labelled:
        return []  # the labels may pull it away from the teacher on purpose
    return [f"distillation made output {out.name!r} farther from the teacher ({out.loss} on the first batch "
            f"{out.before:.4g} -> {out.after:.4g}); lower --lr, or try --class-axis mse"
            for out in report.outputs if out.after is not None and out.after > out.before]


def _provenance(report: FinetuneReport) -> dict:
    c = report.config
    return {"version": 1, "epochs": len(report.epochs), "steps": report.steps, "lr": c.lr, "seed": c.seed,
            "distilled": report.distilled, "temperature": c.temperature if report.distilled else None,
            "distill_weight": c.distill_weight if report.distilled else None,
            "distill_losses": {o.name: o.loss for o in report.outputs} if report.distilled else None,
            "weight_decay": c.weight_decay, "device": report.device, "world_size": report.world_size,
            "seconds": round(report.seconds, 1),
            "val_accuracy": report.epochs[-1].val_accuracy if report.epochs else None}

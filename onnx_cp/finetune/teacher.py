"""Distillation's teacher: converted once, its outputs paired with the student's by name (or position),
and each pair's loss chosen (``onnx_cp.finetune.distill``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.finetune.config import FinetuneConfig
from onnx_cp.finetune.convert import fit_batch, output_list, to_torch
from onnx_cp.finetune.distill import OutputLoss, output_loss, plan_losses, softmax_outputs
from onnx_cp.finetune.report import DistilledOutput, FinetuneReport
from onnx_cp.model_io import load_model


# Memory the teacher's cached outputs may take; batches past it are computed each epoch.
TEACHER_CACHE_BYTES = 2 << 30


@dataclass
class Distiller:
    """The teacher and what to distill: student output ``i`` against teacher output ``j`` for
    each pair, with the loss ``plan`` gives."""

    module: Any
    count: int | None  # the teacher's number of outputs (None: a torch module, as many as it returns)
    pairs: list[tuple[int, int]]
    plan: list[OutputLoss]
    # the teacher's outputs by batch position, where every epoch feeds the same batches (a list):
    # computed in the first epoch only (ddddocr's teacher was 29% of each distillation step)
    cache: dict[int, list] | None = None
    cached_bytes: int = 0

    def losses(self, student_outputs: list, x, temperature: float, position: int | None = None) -> list:
        targets = self._targets(x, position)
        return [output_loss(spec, student_outputs[i], targets[j], temperature)
                for spec, (i, j) in zip(self.plan, self.pairs)]

    def _targets(self, x, position: int | None) -> list:
        import torch

        if self.cache is not None and position in self.cache:
            return self.cache[position]
        with torch.no_grad():
            targets = output_list(self.module(x), self.count)
        size = sum(t.numel() * t.element_size() for t in targets)
        if self.cache is not None and position is not None and self.cached_bytes + size <= TEACHER_CACHE_BYTES:
            self.cache[position] = targets
            self.cached_bytes += size
        return targets

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


def distiller_for(teacher, dev, x0, student, source: onnx.ModelProto, config: FinetuneConfig,
                  report: FinetuneReport) -> Distiller:
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
    pairs = pair_outputs(student_names, names, len(t_outs))
    for i, j in pairs:
        if t_outs[j].shape != s_outs[i].shape:
            raise OnnxCpError(f"the teacher outputs {tuple(t_outs[j].shape)} but the model {tuple(s_outs[i].shape)} "
                              f"for output {student_names[i]!r} on the same batch; distill from the model that "
                              "was rewritten")
    plan = plan_losses([(student_names[i], tuple(s_outs[i].shape)) for i, _ in pairs], dict(config.class_axes),
                       teacher_probabilities={student_names[i] for i, j in pairs
                                              if names is not None and names[j] in probabilities},
                       student_probabilities=softmax_outputs(source))
    distiller = Distiller(module, len(names) if names is not None else None, pairs, plan)
    before = distiller.check(student, x0, dev, config.temperature)
    report.outputs = [DistilledOutput(spec.name, spec.label, spec.rule, value) for spec, value in zip(plan, before)]
    left = [name for k, name in enumerate(student_names) if k not in {i for i, _ in pairs}]
    if left:
        report.notes.append(f"output(s) {left} not distilled: the teacher has no output of that name")
    return distiller


def pair_outputs(student: list[str], teacher: list[str] | None, teacher_count: int) -> list[tuple[int, int]]:
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

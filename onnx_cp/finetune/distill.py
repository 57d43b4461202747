"""Distillation over every output the teacher and the student share, one loss per output.

Two losses:

- ``kl``: KL(teacher || student) of the temperature-softened distributions along a class axis,
  times T^2, summed over that axis and averaged over every other position (for N x C logits this
  is torch's ``batchmean``, the loss onnx-cp has always used for classifiers). An output that a
  Softmax computes holds probabilities: its logarithm serves as the logits.
- ``mse``: normalized squared error ||s - t||^2 / ||t||^2 over the batch, for regression and
  detection heads (scale-free, so heads of different magnitudes weigh alike).

Which loss, per output (the first rule that applies):

1. ``class_axes`` names the output: ``{"logits": 2}`` (KL along axis 2) or ``{"boxes": None}`` (MSE);
2. ``class_axes`` has ``"*"``: that choice for every other output;
3. a 2-D output (N, C) with C >= 2: KL along axis 1;
4. a 3-D output ((T, N, C) sequence logits, or (N, T, C)) with C >= 2: KL along the last axis;
5. anything else: MSE.

The distillation loss is the mean of the per-output losses. This module needs torch only in the
functions that compute losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import onnx

from onnx_cp.errors import Message, OnnxCpError, param

EVERY_OUTPUT = "*"
_MSE_WORDS = ("mse", "none")
_EPS = 1e-12


@dataclass(frozen=True)
class OutputLoss:
    """How one output is distilled."""

    name: str  # the student's output name
    kind: str  # "kl" or "mse"
    axis: int | None  # the class axis of "kl" (non-negative)
    rule: str  # why this loss: the option that chose it or the shape rule
    teacher_probabilities: bool = False  # the teacher's output comes from a Softmax
    student_probabilities: bool = False

    @property
    def label(self) -> str:
        return f"kl(axis={self.axis})" if self.kind == "kl" else "mse"


def parse_class_axes(values: Iterable[str]) -> dict[str, int | None]:
    """``["1", "boxes=mse", "logits=2"]`` -> ``{"*": 1, "boxes": None, "logits": 2}`` (--class-axis)."""
    parsed: dict[str, int | None] = {}
    for text in values:
        name, sep, value = text.rpartition("=")
        name = name if sep else EVERY_OUTPUT
        if sep and not name:
            raise OnnxCpError(f"--class-axis {text!r}: name the output before '=', e.g. logits=2", usage=True)
        if value.strip().lower() in _MSE_WORDS:
            parsed[name] = None
            continue
        try:
            parsed[name] = int(value)
        except ValueError:
            raise OnnxCpError(f"--class-axis {text!r}: give [OUTPUT=]AXIS (an integer, e.g. 1 or -1) or "
                              "[OUTPUT=]mse", usage=True) from None
    return parsed


def normalize_class_axes(value) -> tuple[tuple[str, int | None], ...]:
    """A mapping (or pairs) of output name or "*" -> axis or None, as a sorted tuple of pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple(sorted((str(k), None if v is None else int(v)) for k, v in items))
    except (TypeError, ValueError):
        raise OnnxCpError(f"class_axes {value!r}: give a mapping of output name (or '*') to an axis or None",
                          usage=True) from None
    return pairs


def softmax_outputs(model: onnx.ModelProto) -> set[str]:
    """The graph outputs that a Softmax node computes (probabilities, not logits)."""
    outputs = {o.name for o in model.graph.output}
    return {n.output[0] for n in model.graph.node
            if n.op_type == "Softmax" and n.domain in ("", "ai.onnx") and n.output and n.output[0] in outputs}


def plan_losses(shapes: Sequence[tuple[str, tuple[int, ...]]], class_axes: Mapping[str, int | None], *,
                teacher_probabilities: Iterable[str] = (),
                student_probabilities: Iterable[str] = ()) -> list[OutputLoss]:
    """One OutputLoss per (student output name, shape) in ``shapes``, by the rules above.

    ``teacher_probabilities`` / ``student_probabilities``: names of the outputs (the student's
    names) that the respective model computes with a Softmax. A ``class_axes`` entry naming no
    output, or an axis that does not fit the output, raises OnnxCpError.
    """
    names = [name for name, _ in shapes]
    unknown = sorted(set(class_axes) - set(names) - {EVERY_OUTPUT})
    if unknown:
        raise OnnxCpError(f"{param('class_axes')} names {unknown}, but the distilled outputs are {names}",
                          usage=True)
    t_probs, s_probs = set(teacher_probabilities), set(student_probabilities)
    plan = []
    for name, shape in shapes:
        if name in class_axes or EVERY_OUTPUT in class_axes:
            axis = class_axes[name] if name in class_axes else class_axes[EVERY_OUTPUT]
            kind, rule = ("kl" if axis is not None else "mse"), Message(param("class_axes"))  # CLI: --class-axis
            if axis is not None:
                axis = _check_axis(name, shape, axis)
        elif len(shape) == 2 and shape[1] >= 2:
            kind, axis, rule = "kl", 1, "2-D (N, C): classes on axis 1"
        elif len(shape) == 3 and shape[2] >= 2:
            kind, axis, rule = "kl", 2, "3-D (T, N, C): classes on the last axis"
        else:
            kind, axis, rule = "mse", None, f"{len(shape)}-D {tuple(shape)}: not class logits"
        plan.append(OutputLoss(name, kind, axis, rule, name in t_probs, name in s_probs))
    return plan


def output_loss(spec: OutputLoss, student, teacher, temperature: float):
    """The loss of one output: a scalar tensor (see the module's description)."""
    import torch.nn.functional as F

    teacher = teacher.detach().float()
    if spec.kind == "mse":
        return ((student - teacher) ** 2).sum() / (teacher ** 2).sum().clamp_min(_EPS)
    t = temperature
    log_s = F.log_softmax(_logits(student, spec.student_probabilities).movedim(spec.axis, -1) / t, dim=-1)
    log_t = F.log_softmax(_logits(teacher, spec.teacher_probabilities).movedim(spec.axis, -1) / t, dim=-1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(-1)
    return per_position.mean() * (t * t)


def _logits(values, probabilities: bool):
    return values.clamp_min(_EPS).log() if probabilities else values


def _axis(name: str, axis: int) -> str:
    return param("class_axes", repr({name: axis}), cli=f"{name}={axis}")


def _check_axis(name: str, shape: tuple[int, ...], axis: int) -> int:
    rank = len(shape)
    if not -rank <= axis < rank:
        raise OnnxCpError(f"{_axis(name, axis)}: output {name!r} has {rank} axes {tuple(shape)}; give "
                          f"an axis in {-rank}..{rank - 1}", usage=True)
    axis %= rank
    if shape[axis] < 2:
        raise OnnxCpError(f"{_axis(name, axis)}: output {name!r} {tuple(shape)} has size {shape[axis]} "
                          "there, no classes to compare; give another axis or mse", usage=True)
    return axis

"""``FinetuneConfig``: how to train, validated once and shared by ``onnx-cp finetune`` and the Python API."""
from __future__ import annotations

import math
from dataclasses import dataclass

from onnx_cp.errors import OnnxCpError, param
from onnx_cp.finetune.distill import normalize_class_axes


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

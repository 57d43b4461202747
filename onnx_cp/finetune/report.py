"""What fine-tuning reports: the callback's ``Step``, per-epoch figures, each distilled output, and the
``FinetuneReport`` that the command prints and writes as JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import onnx

from onnx_cp.finetune.config import FinetuneConfig


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

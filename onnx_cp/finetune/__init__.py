"""Fine-tuning after the rewrite: train the CP-form network in torch, export it back to ONNX.

    import onnx_cp
    tuned = onnx_cp.finetune("fast.onnx", loader, epochs=3, lr=1e-3, teacher="orig.onnx")
    onnx_cp.save_model(tuned, "tuned.onnx")

``to_torch`` / ``to_onnx`` are the two conversions on their own; ``missing_converters`` names the
operators onnx2torch cannot import (onnx-cp adds a converter for LSTM). torch and onnx2torch (the
``finetune`` extra) are imported when a function needs them, so importing this package, or
``onnx_cp``, works without them.
"""
import sys
import types

from onnx_cp.finetune.convert import ExportNotes, op_counts, structure_changes, to_onnx, to_torch
from onnx_cp.finetune.converters import missing_converters
from onnx_cp.finetune.data import load_image_folder, load_images
from onnx_cp.finetune.normalize import normalize
from onnx_cp.finetune.config import FinetuneConfig
from onnx_cp.finetune.report import DistilledOutput, EpochStats, FinetuneReport, FinetuneResult, Step
from onnx_cp.finetune.train import finetune, finetune_with_report

__all__ = [
    "DistilledOutput", "EpochStats", "ExportNotes", "FinetuneConfig", "FinetuneReport", "FinetuneResult", "Step",
    "finetune", "finetune_with_report", "load_image_folder", "load_images", "missing_converters", "normalize",
    "op_counts", "structure_changes", "to_onnx", "to_torch",
]


class _CallableModule(types.ModuleType):
    """Lets ``onnx_cp.finetune(model, loader, ...)`` call ``finetune`` while ``onnx_cp.finetune``
    stays the package that holds the rest of the fine-tuning API."""

    def __call__(self, *args, **kwargs):
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

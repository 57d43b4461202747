"""The distill stage (--calib, after recover): the rewritten layers' weights trained together so the
whole model's outputs match the input's (``calibrate.distill``); kept where the held-back output
error drops. Without torch or onnx2torch, or on a model onnx2torch cannot import, the recovered
model stays and the report says why."""
from __future__ import annotations

from onnx_cp.progress import staged
from onnx_cp.stages.context import Rewrite


def distill(rw: Rewrite) -> None:
    calib = rw.calibration
    if calib is None or not rw.config.recover or rw.config.distillation_epochs == 0 or not rw.rewritten():
        return
    nodes = [name for r in rw.rewritten() for name in rw.new_names.get(r.site.key, [])]
    rw.final = calib.distill(rw.model, rw.final, nodes, staged(rw.progress, "distillation"), rw.time_left())
    if calib.distillation.note:
        rw.notes.append(f"whole-model distillation {calib.distillation.note}")

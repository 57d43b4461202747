"""Does the exported ONNX model compute what the torch module does? Checked before training (so a
model that would lose its structure or numerics fails in seconds) and after it."""
from __future__ import annotations

import onnx

from onnx_cp.errors import Message, OnnxCpError, param
from onnx_cp.finetune.convert import fit_batch, max_difference, output_list, structure_changes, to_onnx
from onnx_cp.finetune.report import FinetuneReport

# Exported vs torch outputs must agree within ATOL + RTOL * max|output|, plus twice what float32
# rounding alone moves the outputs (measured against float64) when that is more.
RTOL, ATOL = 1e-3, 1e-4


def precheck(source: onnx.ModelProto, student, x0, report: FinetuneReport) -> None:
    """Export the untrained module once: refuse before training if structure or outputs change."""
    trial = to_onnx(student, source, example=x0)
    changes = structure_changes(source, trial)
    if changes.get("Conv", 0):
        raise OnnxCpError(f"exporting the converted model changes its Conv count by {changes['Conv']:+d} "
                          f"(all changes: {changes}); fine-tuning would lose the CP structure")
    diff, scale, ok = agreement(source, student, fit_batch(source, x0), report, "the input model")
    if not ok:
        raise OnnxCpError(f"onnx2torch's module differs from the model in onnxruntime by {diff:.3g} (outputs up "
                          f"to {scale:.3g}) before any training, more than float32 rounding explains; an "
                          "operator converts wrongly")


def agreement(model: onnx.ModelProto, module, x, report: FinetuneReport, what: str):
    """(max |onnxruntime - torch|, max |output|, whether that difference is acceptable).

    A model whose CP factors are degenerate (huge terms that cancel) computes its outputs with
    large float32 rounding error, in onnxruntime and torch alike; such a model passes when the
    two agree within twice that error, and the report says how unstable it is.
    """
    diff, scale = max_difference(model, module, x)
    allowed = ATOL + RTOL * scale
    if diff <= allowed:
        return diff, scale, True
    noise = rounding_error(module, x)
    if noise > allowed:
        report.notes.append(Message(
            f"{what} is numerically unstable in float32: rounding alone moves its outputs by up to {noise:.3g} "
            f"(outputs up to {scale:.3g}); its CP factors are probably degenerate: rewrite with "
            f"{param('stabilize', repr('always'), cli='always')} or a lower rank"))
    return diff, scale, diff <= allowed + 2 * noise


def rounding_error(module, x) -> float:
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


def note_structure(report: FinetuneReport) -> None:
    """A note naming the operators the export added or removed, when it changed any."""
    if report.structure:
        added = {op: d for op, d in report.structure.items() if d > 0}
        removed = {op: -d for op, d in report.structure.items() if d < 0}
        parts = ([f"added {added}"] if added else []) + ([f"removed {removed}"] if removed else [])
        report.notes.append("the exported graph's operators differ from the input's: " + "; ".join(parts))

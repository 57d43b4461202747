"""onnx2torch's converter registry, as fine-tuning uses it: onnx-cp's own converters added
(``onnx_cp.finetune.lstm``), and the operators of a model that still have none, found before
any conversion or training.

    register_converters()
    missing_converters(model)   # ['Foo (domain com.example, version 1)', ...]: empty when importable
"""
from __future__ import annotations

import onnx

from onnx_cp.errors import OnnxCpError, spelled
from onnx_cp.finetune._deps import onnx2torch_version, require_torch

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Calibration-driven rewriting recovers accuracy without importing the model into torch.
IMPORT_FREE_HINT = spelled("use onnx_cp.rewrite with RewriteConfig(calib=DATA), which needs no import",
                           "use `onnx-cp rewrite --calib DATA`, which needs no import")


def register_converters() -> None:
    """Add onnx-cp's converters (LSTM) to onnx2torch's registry; calling it again does nothing."""
    require_torch()
    from onnx_cp.finetune import lstm

    lstm.register()


def missing_converters(model: onnx.ModelProto) -> list[str]:
    """The top-level graph's operators that onnx2torch (with onnx-cp's converters) cannot convert,
    each once, as 'LSTM (opset 14)' or 'Foo (domain com.example, version 1)'."""
    register_converters()
    from onnx2torch.node_converters.registry import get_converter

    versions = {o.domain: o.version for o in model.opset_import}
    missing: dict[tuple[str, str], str] = {}
    for node in model.graph.node:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        key = (domain, node.op_type)
        if key in missing:
            continue
        version = versions.get(domain, versions.get("ai.onnx")) if not domain else versions.get(domain)
        if version is None:
            missing[key] = f"{node.op_type} (domain {domain}, not in the model's opset_import)"
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            missing[key] = (f"{node.op_type} (opset {version})" if not domain else
                            f"{node.op_type} (domain {domain}, version {version})")
    return list(missing.values())


def require_converters(model: onnx.ModelProto, what: str = "the model") -> None:
    """Raise OnnxCpError (a usage error) naming every operator of ``model`` without a converter."""
    missing = missing_converters(model)
    if missing:
        raise OnnxCpError(f"fine-tuning cannot import {what}: onnx2torch {onnx2torch_version()} has no converter for "
                          f"{', '.join(missing)}; {IMPORT_FREE_HINT}", usage=True)

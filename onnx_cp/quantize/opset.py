"""The opset that per-channel INT8 needs: DequantizeLinear's ``axis`` came with opset 13."""
from __future__ import annotations

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import first_line

MIN_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself at opset 13 or later, else its conversion to 13 by onnx's version
    converter; refused in one line when the converter cannot do it."""
    opset = default_opset(model)
    if opset is None or opset >= MIN_OPSET:
        return model
    import onnx.version_converter

    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError or ValidationError, op by op
        raise OnnxCpError(f"the model is at opset {opset}; per-channel INT8 needs opset {MIN_OPSET}, and onnx's "
                          f"version converter cannot upgrade it ({first_line(exc)}); re-export the model at opset "
                          f"{MIN_OPSET} or later") from None

"""How far a quantized model's outputs are from its float model's, on inputs held back from calibration."""
from __future__ import annotations

import onnx

from onnx_cp.quantize.feeds import CalibrationInputs, calibration_feeds
from onnx_cp.calibrate.activations import output_error, run_feeds as run


def int8_error(float_model: onnx.ModelProto, quantized: onnx.ModelProto, inputs: CalibrationInputs, *,
               threads: int = 1) -> float:
    """sqrt(sum ||q(x) - f(x)||^2 / sum ||f(x)||^2) over every float output and every input
    (the same measure as the rewrite's output error, so the two compare)."""
    feeds = calibration_feeds(float_model, inputs)
    return output_error(run(quantized, feeds, threads), run(float_model, feeds, threads))

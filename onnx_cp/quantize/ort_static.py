"""One float model in a folder, quantized by onnxruntime's ``quantize_static`` (QDQ, per-channel
int8 weights, uint8 MinMax activations) as often as needed: the activation ranges are computed on
the first call and cached in the folder, so leaving other nodes float costs no second calibration."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.model_io import load_model, needs_external_data, save_model
from onnx_cp.runtime import first_line


class StaticRun:
    def __init__(self, model: onnx.ModelProto, folder: Path):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._large = needs_external_data(model)
        self._ranges = folder / "ranges.json"
        self._runs = 0
        saved = save_model(model, folder / "float.onnx")
        self._input = folder / "inferred.onnx"
        try:  # shape inference only: onnxruntime's optimizations would rename nodes
            quant_pre_process(str(saved), str(self._input), skip_optimization=True, skip_symbolic_shape=True,
                              save_as_external_data=self._large)
        except Exception as exc:  # onnx's shape inference raises its own types
            raise OnnxCpError(f"onnx's shape inference fails on the model ({first_line(exc)}); check it with "
                              "onnx.checker.check_model(model, full_check=True)") from None

    def quantize(self, feeds: list[dict], nodes_to_exclude: Sequence[str], op_types: Sequence[str]) -> onnx.ModelProto:
        """The model in INT8 (``feeds`` calibrate it on the first call), ``nodes_to_exclude`` float."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        self._runs += 1
        out = self._folder / f"int8_{self._runs}.onnx"
        reader = None if self._ranges.exists() else _Reader(feeds)
        try:
            with _quiet():
                quantize_static(str(self._input), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(nodes_to_exclude),
                                op_types_to_quantize=list(op_types),
                                use_external_data_format=self._large, calibration_cache_path=str(self._ranges))
        except Exception as exc:  # onnxruntime raises its own types, and ValueError, op by op
            raise OnnxCpError(f"onnxruntime's quantize_static fails on the model ({first_line(exc)}); check that "
                              "onnxruntime runs the float model") from None
        return load_model(out, check=False)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


@contextmanager
def _quiet():
    """onnxruntime's quantizer logs a warning on the root logger per node it would rather have
    excluded (a captcha reader's 80 unrolled Gemms with computed biases: 220 lines); the decision
    to keep a node float is made by measurement here, so they are held back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)

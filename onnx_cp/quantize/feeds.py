"""Calibration inputs for INT8: an array for the model's one input, or feed dicts, checked once.

    feeds = calibration_feeds(model, x)            # x: N x C x H x W for the model's one input
    calib, held = split_held_back(x, 0.25)         # the last quarter held back for the error
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import runtime_inputs

# An array N x ... for the model's one input, or one {input name: array} per run.
CalibrationInputs = Union[np.ndarray, Sequence[Mapping[str, np.ndarray]]]


def calibration_feeds(model: onnx.ModelProto, inputs: CalibrationInputs) -> list[dict[str, np.ndarray]]:
    """``inputs`` as onnxruntime feeds, refused in one line when they do not fit the model.

    An array is cut into runs along its first axis: one sample per run where the model's batch
    is dynamic, its fixed batch otherwise (samples past the last full batch are left out).
    """
    args = runtime_inputs(model.graph)
    if isinstance(inputs, np.ndarray):
        return _from_array(args, inputs)
    if isinstance(inputs, Mapping) or not isinstance(inputs, Sequence) or not len(inputs):
        raise OnnxCpError("the calibration inputs must be an array N x ... for the model's one input or a "
                          f"non-empty list of feed dicts, got {type(inputs).__name__}")
    names = [a.name for a in args]
    feeds = []
    for i, feed in enumerate(inputs):
        if not isinstance(feed, Mapping) or sorted(feed) != sorted(names):
            got = sorted(feed) if isinstance(feed, Mapping) else type(feed).__name__
            raise OnnxCpError(f"calibration feed {i} holds {got}; the model's inputs are {names}")
        feeds.append({name: _checked(np.asarray(feed[name]), arg, f"calibration feed {i}")
                      for name, arg in zip(names, args)})
    return feeds


def split_held_back(inputs: CalibrationInputs, fraction: float = 0.25) -> tuple[CalibrationInputs, CalibrationInputs]:
    """(calibration, held back): the last ``fraction`` of the inputs (at least one) is held back
    to measure the output error on inputs the calibration did not see."""
    if not 0.0 < fraction < 1.0:
        raise OnnxCpError(f"the held-back fraction must lie in (0, 1), got {fraction}")
    count = len(inputs)
    if count < 2:
        raise OnnxCpError(f"{count} calibration input(s): holding some back needs at least 2; give more inputs")
    held = min(count - 1, max(1, round(count * fraction)))
    return inputs[:count - held], inputs[count - held:]


def _from_array(args: Sequence[onnx.ValueInfoProto], x: np.ndarray) -> list[dict[str, np.ndarray]]:
    if len(args) != 1:
        raise OnnxCpError(f"an array of calibration inputs feeds one input, but the model has {len(args)} "
                          f"({', '.join(a.name for a in args)}); give a list of feed dicts")
    arg = args[0]
    dims = _dims(arg)
    step = dims[0] if dims and isinstance(dims[0], int) else 1
    if len(x) < step:
        raise OnnxCpError(f"{len(x)} calibration input(s), but the model's input {arg.name!r} takes batches of "
                          f"{step}; give at least {step}")
    runs = len(x) // step
    return [{arg.name: _checked(x[i * step:(i + 1) * step], arg, "the calibration inputs")} for i in range(runs)]


def _checked(value: np.ndarray, arg: onnx.ValueInfoProto, where: str) -> np.ndarray:
    """``value`` in the input's element type; refused when its shape cannot feed the input."""
    dims = _dims(arg)
    if dims is not None and (value.ndim != len(dims)
                             or any(isinstance(d, int) and d != v for d, v in zip(dims, value.shape))):
        shown = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
        raise OnnxCpError(f"{where}: shape {'x'.join(map(str, value.shape))} does not fit the model's input "
                          f"{arg.name!r} ({shown})")
    dtype = helper.tensor_dtype_to_np_dtype(arg.type.tensor_type.elem_type)
    if value.dtype.kind not in "fiub" or (np.issubdtype(dtype, np.floating) and
                                           not np.isfinite(value.astype(np.float64, copy=False)).all()):
        raise OnnxCpError(f"{where}: input {arg.name!r} holds {value.dtype} values that are not all finite numbers; "
                          "give real samples")
    return value.astype(dtype, copy=False)


def _dims(arg: onnx.ValueInfoProto) -> list[int | None] | None:
    """The input's dims: an int where fixed, None where dynamic; None when it declares no shape."""
    if not arg.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in arg.type.tensor_type.shape.dim]

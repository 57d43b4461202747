"""A user's metric: ``f(model_path: str, data: dict) -> float``, higher is better.

    f = import_metric("tools.ocr.exact_metric:exact")    # MODULE:FUNCTION, from the working directory
    value = call_metric(f, "exact", model, data)          # the model written to a temporary file

The module is imported the way ``python -m`` would find it from the working directory, or from
PYTHONPATH. ``data`` holds the part's arrays under their own keys, read-only, so one call cannot
change what the next one sees. A metric that does not import, raises, or returns anything but one
finite number is refused in one line that says what it did.
"""
from __future__ import annotations

import contextlib
import importlib
import numbers
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import onnx

from onnx_cp.errors import OnnxCpError, param
from onnx_cp.model_io import save_model
from onnx_cp.runtime import ModelLike

MetricFunction = Callable[[str, dict], float]


def metric_param(spec: str) -> str:
    return param("metric", repr(spec), cli=spec)


def import_metric(spec: str) -> MetricFunction:
    """The function ``spec`` (``MODULE:FUNCTION``) names."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise OnnxCpError(f"{metric_param(spec)} is not MODULE:FUNCTION (like mymetrics:exact_match); the built-in "
                          "metrics are top1, top5 and agreement", usage=True)
    with _working_directory_importable():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise OnnxCpError(f"{metric_param(spec)}: no module {exc.name!r} importable from the working "
                                  f"directory ({os.getcwd()}) or PYTHONPATH; run from the folder that holds it or add "
                                  "that folder to PYTHONPATH", usage=True) from None
            raise OnnxCpError(f"{metric_param(spec)}: importing {module_name} failed: {exc}", usage=True) from None
        except Exception as exc:
            raise OnnxCpError(f"{metric_param(spec)}: importing {module_name} raised {_error_text(exc)}",
                              usage=True) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        what = "has no attribute" if function is None else f"has a {type(function).__name__}, not a function, as"
        raise OnnxCpError(f"{metric_param(spec)}: module {module_name} {what} {function_name!r}; name a function "
                          "f(model_path, data) -> float", usage=True)
    return function


def call_metric(function: MetricFunction, name: str, model: ModelLike, data: Mapping[str, np.ndarray]) -> float:
    """``function(path, data)``, checked to be one finite number; a ModelProto is saved to a
    temporary file for the call, a path is passed as it is."""
    frozen = {key: _read_only(array) for key, array in data.items()}
    with tempfile.TemporaryDirectory(prefix="onnx-cp-metric-") as folder, _working_directory_importable():
        path = save_model(model, Path(folder) / "model.onnx") if isinstance(model, onnx.ModelProto) else model
        try:
            value = function(str(path), frozen)
        except Exception as exc:
            raise OnnxCpError(f"{metric_param(name)} raised {_error_text(exc)}; it is called as "
                              "f(model_path: str, data: dict) -> float", usage=True) from None
    return checked_number(value, name)


def checked_number(value, name: str) -> float:
    """``value`` as a float, or a one-line refusal saying what the metric returned instead."""
    number = (isinstance(value, numbers.Real) and not isinstance(value, bool)) or (
        isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu")
    if not number:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise OnnxCpError(f"{metric_param(name)} returned {shown} ({type(value).__name__}), not a number; return "
                          "one float, higher is better", usage=True)
    result = float(value)
    if not np.isfinite(result):
        raise OnnxCpError(f"{metric_param(name)} returned {result}; return a finite number, higher is better",
                          usage=True)
    return result


@contextlib.contextmanager
def _working_directory_importable() -> Iterator[None]:
    """The working directory on sys.path while the user's code runs (a console script's sys.path
    starts at its own folder, not the working directory), removed afterwards."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

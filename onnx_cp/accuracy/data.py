"""The data an accuracy target is measured on: its arrays by key, checked against the model's input.

    data = load_data("val.npz", model)        # {'x': float32 (N, ...), 'y': int64 (N,), 'texts': ...}
    data = load_data("inputs.npy", model)     # {'x': ...}: inputs only
    data = load_data("images/", model)        # class subfolders: y indexes the sorted folder names
    data = load_data({"x": x, "y": y}, model) # arrays in memory, checked the same way

An .npz keeps every array under its own key: ``x`` is fed to the model's one input, ``y`` (when
present) holds integer class labels, and any other array (``texts``, say) is there for a user's
metric. ``x`` keeps the model's dims where the model (or ``input_shapes``) fixes them, holds
floats for a float input (cast to the input's dtype) and no NaN or Inf.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import onnx
from onnx import helper

from onnx_cp.errors import OnnxCpError, param, shape_given
from onnx_cp.graph import runtime_inputs
from onnx_cp.shapes import fix_input_shapes

DataSource = Union[str, os.PathLike, Mapping[str, np.ndarray]]


def data_param(source) -> str:
    """The data in a message: ``data='val.npz'`` for the API, ``--data val.npz`` for the CLI."""
    if isinstance(source, Mapping):
        return param("data")
    return param("data", repr(str(source)), cli=str(source))


def sample_count(data: Mapping[str, np.ndarray]) -> int:
    return len(data["x"])


def load_data(source: DataSource, model: onnx.ModelProto,
              input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Every array of ``source`` by key, ``x`` fit for the model's input and ``y`` (if any) int64.

    Refused with one line (OnnxCpError, usage) when a file cannot be read, ``x`` is missing, does
    not fit the input, or holds NaN or Inf, or ``y`` is not one class index per sample.
    """
    where = data_param(source)
    name, dims, dtype = model_input(model, input_shapes or {})
    if isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        path = Path(source)
        if not path.exists():
            raise OnnxCpError(f"{where}: no such file or folder; pass an .npz (arrays x and y), an .npy "
                              "(inputs only) or a folder of images in class subfolders", usage=True)
        if path.is_dir():
            from onnx_cp.accuracy.folder import read_image_folder

            arrays = read_image_folder(path, dims, where)
        else:
            arrays = _read_file(path, where)
    if "x" not in arrays:
        raise OnnxCpError(f"{where}: no array 'x' (it holds {', '.join(sorted(arrays)) or 'nothing'}); save the "
                          "model's inputs as np.savez(path, x=inputs, y=labels)", usage=True)
    arrays["x"] = _checked_inputs(arrays["x"], name, dims, dtype, where, input_shapes or {})
    if "y" in arrays:
        arrays["y"] = _checked_labels(arrays["y"], len(arrays["x"]), where)
    return arrays


def model_input(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
                ) -> tuple[str, tuple[int | None, ...], np.dtype]:
    """The one runtime input's name, its dims after the batch (None where dynamic), and its dtype."""
    inputs = runtime_inputs(model.graph)
    if len(inputs) != 1:
        raise OnnxCpError(f"accuracy is measured by feeding one input, but the model has {len(inputs)} "
                          f"({', '.join(i.name for i in inputs)}); make the others initializers", usage=True)
    fix_input_shapes(model, input_shapes)  # refuses unknown names and wrong ranks
    arg = inputs[0]
    if arg.name in input_shapes:
        dims: tuple[int | None, ...] = tuple(int(d) for d in input_shapes[arg.name][1:])
    else:
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in arg.type.tensor_type.shape.dim[1:])
    return arg.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(arg.type.tensor_type.elem_type))


def _read_file(path: Path, where: str) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise OnnxCpError(f"{where}: unsupported file type {suffix or '(none)'!r}; save the data with "
                          "np.savez(path, x=inputs, y=labels) (.npz) or np.save (.npy, inputs only)", usage=True)
    try:
        if suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise OnnxCpError(f"{where}: it holds Python objects, which are not loaded; store texts as a numpy "
                              "string array (np.array(texts)) and numbers as numeric arrays", usage=True) from None
        raise OnnxCpError(f"{where}: not a readable numpy {suffix} file ({exc}); re-save it with numpy",
                          usage=True) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise OnnxCpError(f"{where}: not a readable numpy {suffix} file ({exc}); re-save it with numpy",
                          usage=True) from None


def _checked_inputs(x: np.ndarray, name: str, dims: tuple[int | None, ...], dtype: np.dtype, where: str,
                    input_shapes: Mapping[str, tuple[int, ...]]) -> np.ndarray:
    want = "x".join("?" if d is None else str(d) for d in dims)
    if x.ndim != len(dims) + 1 or any(d is not None and d != n for d, n in zip(dims, x.shape[1:])):
        fix = "pass samples of that shape" + (f" or change {shape_given(name)}" if name in input_shapes else "")
        raise OnnxCpError(f"{where}: x holds samples of shape {shape_text(x.shape[1:])}, but the model's input "
                          f"{name!r} takes N x {want}; {fix}", usage=True)
    if len(x) == 0:
        raise OnnxCpError(f"{where}: x holds no samples; pass at least 40 (20 to choose with, 20 held back)",
                          usage=True)
    if dtype.kind == "f" and x.dtype.kind != "f":
        raise OnnxCpError(f"{where}: x holds {x.dtype}, but input {name!r} takes {dtype}; store x as floats scaled "
                          "the way the model expects (e.g. x.astype(np.float32) / 255)", usage=True)
    if dtype.kind in "iu" and x.dtype.kind not in "iu":
        raise OnnxCpError(f"{where}: x holds {x.dtype}, but input {name!r} takes {dtype}; store x as integers",
                          usage=True)
    if dtype.kind not in "fiu":
        raise OnnxCpError(f"input {name!r} takes {dtype}; accuracy is measured on numeric inputs only", usage=True)
    x = x.astype(dtype, copy=False)
    if dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if len(bad):
            raise OnnxCpError(f"{where}: {len(bad)} sample(s) of x hold NaN or Inf (the first is sample {bad[0]}); "
                              "drop or clean them", usage=True)
    return x


def _checked_labels(y: np.ndarray, count: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != count:
        raise OnnxCpError(f"{where}: y has shape {shape_text(y.shape)} but x holds {count} samples; store one class "
                          "index per sample as a 1-D array", usage=True)
    if y.dtype.kind not in "iu":
        raise OnnxCpError(f"{where}: y holds {y.dtype}; labels are integer class indices (store "
                          "y.astype(np.int64))", usage=True)
    if len(y) and y.min() < 0:
        raise OnnxCpError(f"{where}: y holds class {y.min()}; labels are class indices from 0", usage=True)
    return y.astype(np.int64, copy=False)


def shape_text(shape) -> str:
    """``(32, 1, 37)`` -> ``32x1x37`` in a message."""
    return "x".join(str(d) for d in shape) or "scalar"

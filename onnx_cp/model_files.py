"""A model file and the external-data files it names, checked before any of them is read.

The input must be a readable, non-empty regular file; every external-data location must be
relative, stay inside the model's folder after symlinks are resolved, name a regular file, and
hold as many bytes as its tensor's dims need.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import SUB_BYTE_TYPES


def check_input_file(path: Path) -> None:
    """Refuse, in one line, a model path that is missing, a folder, not a regular file, empty or unreadable."""
    if not path.exists():
        hint = " (a dangling symlink)" if path.is_symlink() else ""
        raise OnnxCpError(f"{path}: no such file{hint}; check the path", usage=True)
    if path.is_dir():
        raise OnnxCpError(f"{path}: is a directory; pass the .onnx file inside it", usage=True)
    if not path.is_file():
        raise OnnxCpError(f"{path}: not a regular file (a device, pipe or socket); pass an .onnx file",
                          usage=True)
    if path.stat().st_size == 0:
        raise OnnxCpError(f"{path}: the file is empty; re-export the model", usage=True)
    if not os.access(path, os.R_OK):
        raise OnnxCpError(f"{path}: not readable (permission denied); check its permissions")


def external_locations(model: onnx.ModelProto, path: Path) -> list[tuple[onnx.TensorProto, Path, int, int]]:
    """Refuse external-data locations that leave the model's folder, before reading any of them.

    Returns (tensor, file, offset, length) for each tensor to read.
    """
    base = path.parent.resolve()
    found = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except Exception as exc:
            raise OnnxCpError(f"{path}: tensor {tensor.name!r} has unreadable external-data entries "
                              f"({short_reason(exc)}); re-export the model") from None
        location = info.location
        where = f"{path}: tensor {tensor.name!r} has external data at {location!r}"
        if not location or os.path.isabs(location) or Path(location).drive or "\0" in location:
            raise OnnxCpError(f"{where}; locations must be relative to the model's folder, refusing to "
                              "read it")
        target = (base / location).resolve()
        if base not in target.parents:
            raise OnnxCpError(f"{where}, outside the model's folder {base}; refusing to read it")
        if not target.exists():
            raise OnnxCpError(f"{where}, which does not exist; copy the data file next to the model")
        if not target.is_file():
            raise OnnxCpError(f"{where}, which is not a regular file; copy the data file next to the model")
        size = target.stat().st_size
        offset = info.offset or 0
        length = info.length if info.length is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise OnnxCpError(f"{where}, but the file has {size} bytes (wanted offset {offset} "
                              f"+ length {length}); the data file is truncated or not the model's")
        needed = tensor_bytes(tensor)
        if needed is not None and needed != length:
            raise OnnxCpError(f"{where}: {length} bytes, but its dims {list(tensor.dims)} need {needed}; "
                              "the data file is truncated or not the model's")
        found.append((tensor, target, offset, length))
    return found


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's raw data must hold, or None where that is not a fixed size per element."""
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or itemsize < 1:
        return None
    if tensor.data_type in SUB_BYTE_TYPES:
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line of at most ``limit`` characters, for a one-line error."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines)
    return text[:limit] if text else type(exc).__name__

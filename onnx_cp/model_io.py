"""Loading and saving models safely.

Loading never reads outside the model's folder: every external-data location is checked
(relative, inside the folder after symlinks are resolved, a regular file, long enough for
its tensor) before any of them is opened, and the input is never modified.

Saving is atomic: temporary files in the target folder, then a rename, so a failed or
interrupted run leaves any existing output as it was and no temporary file behind. The
model being saved is never modified, and never serialized whole: weights are written one
tensor at a time, so saving needs no second copy of them in memory. Models over 2 GiB get
their weights in a ``<name>.data`` file beside them.

Memory: upb's ``ByteSize()`` serializes the message, and ``onnx.checker.check_model`` on a
ModelProto serializes it too; ``model_size`` and ``checkable_copy`` give the same answers
for the cost of the graph's structure alone.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import copy_tensor_header, data_problem
from onnx_cp.model_files import check_input_file, external_locations, short_reason, tensor_bytes
from onnx_cp.output_paths import check_output_path, folder_of
from onnx_cp.protobuf_stream import PROTOBUF_LIMIT, byte_size, copy_fields, initializer_frame, raw_bytes

__all__ = ["check_output_path", "checkable_copy", "load_model", "model_size", "needs_external_data", "save_model",
           "save_text"]

# Models at least this large are saved with external data (tests lower it).
_EXTERNAL_FROM = PROTOBUF_LIMIT
# Initializers at least this large go to the .data file of a large model.
_EXTERNAL_MIN_BYTES = 1024


def load_model(source: str | os.PathLike | onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """Return the model at ``source`` (a path or a ModelProto) with its external data loaded.

    A ModelProto is returned as a copy, so callers may mutate the result freely.
    ``check`` runs the ONNX checker first, so a broken input is reported as the input's
    fault rather than surfacing later as a broken rewrite.
    """
    if isinstance(source, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(source)
        _require_graph(copy, "the model")
        if any(uses_external_data(t) for t in _get_all_tensors(copy)):
            raise OnnxCpError("the model refers to external data files, which cannot be found from a "
                              "ModelProto; pass the model's path instead, or load it with "
                              "onnx.load(path) first", usage=True)
        if check:
            _run_checker(checkable_copy(copy), "the model")
        return copy
    if not isinstance(source, (str, os.PathLike)):
        raise OnnxCpError(f"expected a path or an onnx.ModelProto, got {type(source).__name__}", usage=True)
    path = Path(source)
    check_input_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise OnnxCpError(f"{path}: out of memory while parsing it; is it really an ONNX model?") from None
    except Exception as exc:  # protobuf and onnx raise several types for a damaged file
        raise OnnxCpError(f"{path}: not a readable ONNX model ({short_reason(exc)}); re-export it") from None
    _require_graph(model, str(path))
    external = external_locations(model, path)
    if check:
        _run_checker(str(path), str(path))  # the checker reads the file itself: 2 GiB is no limit
    for tensor, target, offset, length in external:
        _read_external(tensor, target, offset, length, path)
    return model


def _require_graph(model: onnx.ModelProto, where: str) -> None:
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxCpError(f"{where}: parses as protobuf but is not an ONNX model (no graph or opset); "
                          "pass the exported .onnx file")


def _run_checker(model: onnx.ModelProto | str, where: str) -> None:
    try:
        onnx.checker.check_model(model)
    except MemoryError:
        raise
    except Exception as exc:
        raise OnnxCpError(f"{where}: fails the ONNX checker ({short_reason(exc, 300)}); fix the model or "
                          "re-export it") from None


def checkable_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for ``onnx.checker.check_model`` that costs no memory to speak of:
    tensors over 1 KiB (initializers, Constant values) become empty tensors of the same name
    and type, unless their data does not fit their dims (the checker must see that).

    The plain checker looks at nodes, names and types, not at weight values, so the result
    is the same as checking ``model``, which would serialize it (twice its size in memory)
    and refuses models over 2 GiB.
    """
    return _light_copy(model, keep_damaged=True)[0]


def model_size(model: onnx.ModelProto) -> int:
    """About ``model.ByteSize()``, without serializing the model as upb's ByteSize does
    (a transient copy of the whole model): weights count by their dims."""
    light, stubbed = _light_copy(model, keep_damaged=False)
    return light.ByteSize() + stubbed


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large for one protobuf message (2 GiB): it must be saved with
    external data, and handed to onnxruntime as a path rather than serialized bytes."""
    return model_size(model) >= _EXTERNAL_FROM


def _light_copy(model: onnx.ModelProto, keep_damaged: bool) -> tuple[onnx.ModelProto, int]:
    light = onnx.ModelProto()
    stubbed = [0]

    def tensor_copy(tensor: onnx.TensorProto, target: onnx.TensorProto) -> None:
        size = tensor_bytes(tensor)
        if (size is None or size <= _EXTERNAL_MIN_BYTES or uses_external_data(tensor)
                or (keep_damaged and data_problem(tensor))):
            target.CopyFrom(tensor)
            return
        target.name, target.data_type = tensor.name, tensor.data_type
        target.dims.append(0)
        stubbed[0] += size + 16  # the data, its tag and length, the dims

    copy_fields(model, light, skip=("graph",))
    copy_fields(model.graph, light.graph, skip=("initializer", "node"))
    for tensor in model.graph.initializer:
        tensor_copy(tensor, light.graph.initializer.add())
    for node in model.graph.node:
        copy = light.graph.node.add()
        if node.op_type == "Constant" and any(a.type == onnx.AttributeProto.TENSOR for a in node.attribute):
            copy_fields(node, copy, skip=("attribute",))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    target = copy.attribute.add()
                    copy_fields(attr, target, skip=("t",))
                    tensor_copy(attr.t, target.t)
                else:
                    copy.attribute.add().CopyFrom(attr)
        else:
            copy.CopyFrom(node)
    return light, stubbed[0]


def _read_external(tensor: onnx.TensorProto, target: Path, offset: int, length: int, path: Path) -> None:
    try:
        with open(target, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
    except OSError as exc:
        raise OnnxCpError(f"{path}: cannot read the external data of tensor {tensor.name!r} from "
                          f"{target} ({short_reason(exc)})") from None
    if len(data) != length:
        raise OnnxCpError(f"{path}: the external data of tensor {tensor.name!r} in {target} ended after "
                          f"{len(data)} of {length} bytes; the data file is truncated")
    tensor.raw_data = data
    del data
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, overwrite: bool = False,
               protect: str | os.PathLike | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; models over 2 GiB get a ``<name>.data`` file beside them.

    ``protect`` is the input model's path: writing over it needs ``overwrite=True``, and its
    external-data files are never written over. ``model`` is not modified.
    """
    out = Path(path)
    check_output_path(out, protect=protect, overwrite=overwrite)
    folder = folder_of(out)
    large = needs_external_data(model)
    data_name = out.name + ".data"
    if large:
        check_output_path(folder / data_name, protect=protect, overwrite=overwrite, data_of=out)
    tmp = tmp_data = None
    try:
        tmp = _temporary(folder, out.name, out)
        if large:
            tmp_data = _temporary(folder, data_name, folder / data_name)
            header = _externalized(model, tmp_data, data_name, out)
            _write_file(tmp, header.SerializeToString())
            os.replace(tmp_data, folder / data_name)
            tmp_data = None
        else:
            _write_model(tmp, model)
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise OnnxCpError(f"{out}: could not write the model ({short_reason(exc)}); nothing was written; "
                          "check free disk space and permissions") from None
    finally:
        for leftover in (tmp, tmp_data):
            if leftover and os.path.lexists(leftover):
                os.remove(leftover)
    return out


def save_text(text: str, path: str | os.PathLike, *, protect=None, option: str = "--report") -> Path:
    """Write a report atomically; refuses to replace ``protect`` (input models) or their data files.

    ``option`` names the command-line option in error messages.
    """
    out = Path(path)
    check_output_path(out, protect=protect, overwrite=False, option=option)
    folder = folder_of(out)
    tmp = None
    try:
        tmp = _temporary(folder, out.name, out)
        _write_file(tmp, text.encode("utf-8"))
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise OnnxCpError(f"{option} {out}: could not write it ({short_reason(exc)}); check free disk space "
                          "and permissions") from None
    finally:
        if tmp and os.path.lexists(tmp):
            os.remove(tmp)
    return out


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb", buffering=0) as fh:
        _write(fh, data)
        os.fsync(fh.fileno())


def _write_model(path: str, model: onnx.ModelProto) -> None:
    """Write ``model`` as protobuf without serializing it whole (which would hold a second
    copy of every weight): the model without its initializers, then each initializer as one
    more ``graph { initializer { ... } }`` field, which parsers merge into the same graph."""
    header = onnx.ModelProto()
    copy_fields(model, header, skip=("graph",))
    copy_fields(model.graph, header.graph, skip=("initializer",))
    with open(path, "wb", buffering=0) as fh:
        _write(fh, header.SerializeToString())
        del header
        for tensor in model.graph.initializer:
            data = tensor.SerializeToString()
            _write(fh, initializer_frame(data))
            _write(fh, data)
            del data
        os.fsync(fh.fileno())


def _temporary(folder: Path, name: str, replaces: Path) -> str:
    """An empty temporary file beside ``replaces``, with the mode that file has (or that a new
    file would get): mkstemp's 0600 would make a deployed model unreadable to other users."""
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp", dir=folder)
    try:
        if replaces.is_file():
            mode = replaces.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return tmp


def _write(fh, data) -> None:
    """Write all of ``data`` (unbuffered writes may be partial); the one place bytes hit the disk."""
    view = memoryview(data)
    while view:
        written = fh.write(view)
        if not written:
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[written:]


def _externalized(model: onnx.ModelProto, data_path: str, location: str, out: Path) -> onnx.ModelProto:
    """Write the top graph's initializers to ``data_path`` one by one; return a small model that
    points at them under ``location`` (``model`` is left as it was)."""
    header = onnx.ModelProto()
    copy_fields(model, header, skip=("graph",))
    copy_fields(model.graph, header.graph, skip=("initializer",))
    with open(data_path, "wb", buffering=0) as fh:
        offset = 0
        for tensor in model.graph.initializer:
            data = raw_bytes(tensor) if tensor.data_type != onnx.TensorProto.STRING else None
            if data is None or len(data) < _EXTERNAL_MIN_BYTES:
                header.graph.initializer.add().CopyFrom(tensor)
                continue
            pad = -offset % 4096  # page-aligned, so onnxruntime can map each tensor
            if pad:
                _write(fh, b"\0" * pad)
                offset += pad
            _write(fh, data)
            stub = header.graph.initializer.add()
            copy_tensor_header(tensor, stub)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                stub.external_data.add(key=key, value=value)
            offset += len(data)
            del data
        os.fsync(fh.fileno())
    if byte_size(header) >= PROTOBUF_LIMIT:
        raise OnnxCpError(f"{out}: the model holds over 2 GiB outside its top graph's initializers (in Constant "
                          "nodes or subgraphs), which ONNX cannot save; move them to initializers")
    return header



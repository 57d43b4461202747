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
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from onnx_cp.errors import OnnxCpError, spelled
from onnx_cp.graph import SUB_BYTE_TYPES, copy_tensor_header, data_problem

# Protobuf cannot serialize a message of 2 GiB or more; such models go out with external data.
_PROTOBUF_LIMIT = 2**31 - 1
# Models at least this large are saved with external data (tests lower it).
_EXTERNAL_FROM = _PROTOBUF_LIMIT
# Initializers at least this large go to the .data file of a large model.
_EXTERNAL_MIN_BYTES = 1024
# A model file larger than this holds its weights inline, so it refers to no data files:
# output checks do not parse it to find them.
_HEADER_MAX_BYTES = 64 * 2**20


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
    _check_input_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise OnnxCpError(f"{path}: out of memory while parsing it; is it really an ONNX model?") from None
    except Exception as exc:  # protobuf and onnx raise several types for a damaged file
        raise OnnxCpError(f"{path}: not a readable ONNX model ({_short(exc)}); re-export it") from None
    _require_graph(model, str(path))
    external = _check_external_data(model, path)
    if check:
        _run_checker(str(path), str(path))  # the checker reads the file itself: 2 GiB is no limit
    for tensor, target, offset, length in external:
        _read_external(tensor, target, offset, length, path)
    return model


def _check_input_file(path: Path) -> None:
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
        raise OnnxCpError(f"{where}: fails the ONNX checker ({_short(exc, 300)}); fix the model or "
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
        size = _data_bytes(tensor)
        if (size is None or size <= _EXTERNAL_MIN_BYTES or uses_external_data(tensor)
                or (keep_damaged and data_problem(tensor))):
            target.CopyFrom(tensor)
            return
        target.name, target.data_type = tensor.name, tensor.data_type
        target.dims.append(0)
        stubbed[0] += size + 16  # the data, its tag and length, the dims

    _copy_fields(model, light, skip=("graph",))
    _copy_fields(model.graph, light.graph, skip=("initializer", "node"))
    for tensor in model.graph.initializer:
        tensor_copy(tensor, light.graph.initializer.add())
    for node in model.graph.node:
        copy = light.graph.node.add()
        if node.op_type == "Constant" and any(a.type == onnx.AttributeProto.TENSOR for a in node.attribute):
            _copy_fields(node, copy, skip=("attribute",))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    target = copy.attribute.add()
                    _copy_fields(attr, target, skip=("t",))
                    tensor_copy(attr.t, target.t)
                else:
                    copy.attribute.add().CopyFrom(attr)
        else:
            copy.CopyFrom(node)
    return light, stubbed[0]


def _check_external_data(model: onnx.ModelProto, path: Path) -> list[tuple[onnx.TensorProto, Path, int, int]]:
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
                              f"({_short(exc)}); re-export the model") from None
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
        needed = _data_bytes(tensor)
        if needed is not None and needed != length:
            raise OnnxCpError(f"{where}: {length} bytes, but its dims {list(tensor.dims)} need {needed}; "
                              "the data file is truncated or not the model's")
        found.append((tensor, target, offset, length))
    return found


def _data_bytes(tensor: onnx.TensorProto) -> int | None:
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


def _read_external(tensor: onnx.TensorProto, target: Path, offset: int, length: int, path: Path) -> None:
    try:
        with open(target, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
    except OSError as exc:
        raise OnnxCpError(f"{path}: cannot read the external data of tensor {tensor.name!r} from "
                          f"{target} ({_short(exc)})") from None
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
    folder = _folder(out)
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
        raise OnnxCpError(f"{out}: could not write the model ({_short(exc)}); nothing was written; "
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
    folder = _folder(out)
    tmp = None
    try:
        tmp = _temporary(folder, out.name, out)
        _write_file(tmp, text.encode("utf-8"))
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise OnnxCpError(f"{option} {out}: could not write it ({_short(exc)}); check free disk space "
                          "and permissions") from None
    finally:
        if tmp and os.path.lexists(tmp):
            os.remove(tmp)
    return out


def check_output_path(out: str | os.PathLike, *, protect=None, overwrite: bool = False,
                      option: str = "-o", data_of: Path | None = None) -> None:
    """Refuse an output that would replace an input model or its data, that is not a plain
    file, or whose folder is missing. Call it before the work, so nothing is wasted.

    ``protect``: the input model's path, or several. ``overwrite`` allows ``-o`` (only) to
    be the input model itself. ``data_of``: ``out`` is the ``.data`` file of that model.
    """
    out = Path(out)
    what = str(out) if option == "-o" else f"{option} {out}"
    folder = _folder(out)
    if not folder.exists():
        raise OnnxCpError(f"{what}: the folder {folder} does not exist; create it first", usage=True)
    if not folder.is_dir():
        raise OnnxCpError(f"{what}: {folder} is not a folder; give a path inside a folder", usage=True)
    if out.is_dir():
        raise OnnxCpError(f"{what}: is a directory; give a file name such as {out / 'model.onnx'}",
                          usage=True)
    if out.exists() and not out.is_file():
        raise OnnxCpError(f"{what}: not a regular file (a device, pipe or socket); give a file path",
                          usage=True)
    target = out.resolve()
    for source in _paths(protect):
        if source.exists() and target == source.resolve():
            if data_of is not None or option != "-o" or not overwrite:
                fix = _OTHER_OUTPUT if option == "-o" and data_of is None \
                    else f"choose another {option}"
                raise OnnxCpError(f"{what}: would replace the input model {source}; {fix}", usage=True)
        own_data = data_of is not None and overwrite and data_of.resolve() == source.resolve()
        if not own_data and target in _data_files(source):
            raise OnnxCpError(f"{what}: would replace the external data of the input model {source}; "
                              f"choose another {option}", usage=True)


# save_model's path and overwrite=True; the CLI's -o and --overwrite.
_OTHER_OUTPUT = spelled("choose another path, or pass overwrite=True", "choose another -o, or pass --overwrite")


def _paths(protect) -> list[Path]:
    if protect is None or isinstance(protect, onnx.ModelProto):
        return []
    if isinstance(protect, (str, os.PathLike)):
        return [Path(protect)]
    return [Path(p) for p in protect if isinstance(p, (str, os.PathLike))]


def _data_files(model_path: Path) -> set[Path]:
    """The external-data files an input model refers to (resolved), best effort."""
    try:
        if not model_path.is_file() or model_path.stat().st_size > _HEADER_MAX_BYTES:
            return set()
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return set()
    base = model_path.parent.resolve()
    files = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            try:
                files.add((base / ExternalDataInfo(tensor).location).resolve())
            except Exception:
                continue
    return files


def _folder(out: Path) -> Path:
    return out.parent if str(out.parent) else Path(".")


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # protobuf refuses sizes past 2 GiB on some builds
        return _PROTOBUF_LIMIT


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb", buffering=0) as fh:
        _write(fh, data)
        os.fsync(fh.fileno())


def _write_model(path: str, model: onnx.ModelProto) -> None:
    """Write ``model`` as protobuf without serializing it whole (which would hold a second
    copy of every weight): the model without its initializers, then each initializer as one
    more ``graph { initializer { ... } }`` field, which parsers merge into the same graph."""
    header = onnx.ModelProto()
    _copy_fields(model, header, skip=("graph",))
    _copy_fields(model.graph, header.graph, skip=("initializer",))
    with open(path, "wb", buffering=0) as fh:
        _write(fh, header.SerializeToString())
        del header
        for tensor in model.graph.initializer:
            data = tensor.SerializeToString()
            inner = _field_key(_GRAPH_INITIALIZER) + _varint(len(data))
            _write(fh, _field_key(_MODEL_GRAPH) + _varint(len(inner) + len(data)) + inner)
            _write(fh, data)
            del data
        os.fsync(fh.fileno())


_MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


def _field_key(number: int) -> bytes:
    return _varint(number << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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
    _copy_fields(model, header, skip=("graph",))
    _copy_fields(model.graph, header.graph, skip=("initializer",))
    with open(data_path, "wb", buffering=0) as fh:
        offset = 0
        for tensor in model.graph.initializer:
            data = _raw_bytes(tensor) if tensor.data_type != onnx.TensorProto.STRING else None
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
    if _byte_size(header) >= _PROTOBUF_LIMIT:
        raise OnnxCpError(f"{out}: the model holds over 2 GiB outside its top graph's initializers (in Constant "
                          "nodes or subgraphs), which ONNX cannot save; move them to initializers")
    return header


def _copy_fields(src, dst, skip: tuple[str, ...]) -> None:
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's data as ONNX raw_data (little-endian); None where it must stay inline."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    if tensor.data_type in SUB_BYTE_TYPES:
        return None
    try:
        array = numpy_helper.to_array(tensor)
    except Exception:
        return None
    if sys.byteorder == "big":
        array = array.byteswap()
    return np.ascontiguousarray(array).tobytes()


def _short(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines)
    return text[:limit] if text else type(exc).__name__

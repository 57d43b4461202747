"""Where a command may write: never over an input model or its external data, never to a folder,
device or missing folder. Checked before the work starts, so a bad path wastes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from onnx_cp.errors import OnnxCpError, spelled

# A model file larger than this holds its weights inline, so it refers to no data files:
# output checks do not parse it to find them.
_HEADER_MAX_BYTES = 64 * 2**20


def check_output_path(out: str | os.PathLike, *, protect=None, overwrite: bool = False,
                      option: str = "-o", data_of: Path | None = None) -> None:
    """Refuse an output that would replace an input model or its data, that is not a plain
    file, or whose folder is missing. Call it before the work, so nothing is wasted.

    ``protect``: the input model's path, or several. ``overwrite`` allows ``-o`` (only) to
    be the input model itself. ``data_of``: ``out`` is the ``.data`` file of that model.
    """
    out = Path(out)
    what = str(out) if option == "-o" else f"{option} {out}"
    folder = folder_of(out)
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


def folder_of(out: Path) -> Path:
    """The folder a file is written in ('.' for a bare file name)."""
    return out.parent if str(out.parent) else Path(".")

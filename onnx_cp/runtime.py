"""onnxruntime in one place: CPU sessions and their options.

    session = open_session(model, session_options(threads=4, opt_level="basic"))

``open_session`` takes a path or a ModelProto. A ModelProto that protobuf cannot serialize
(2 GiB or more) is saved with external data (``onnx_cp.model_io.save_model``) to a temporary
folder and loaded from there; the folder lives as long as the session.

onnxruntime is imported on first use, so importing this module costs nothing.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Union

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.model_io import needs_external_data, save_model

if TYPE_CHECKING:
    import onnxruntime as ort

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

# --opt-level name -> the onnxruntime.GraphOptimizationLevel member it selects
OPT_LEVELS: Mapping[str, str] = MappingProxyType({
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
})

_PROVIDERS = ["CPUExecutionProvider"]


def session_options(*, threads: int | None = None, opt_level: str = "all",
                    quiet: bool = True) -> ort.SessionOptions:
    """Options for one CPU session: sequential execution, one inter-op thread.

    threads: intra-op threads (None: onnxruntime's default). opt_level: one of ``OPT_LEVELS``.
    quiet: log errors only (the default: onnxruntime's warnings, such as an output whose shape
    differs from the declared one on every run, would fill the log of a pipeline).
    """
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise OnnxCpError(f"opt_level={opt_level!r} is unknown; use one of {', '.join(OPT_LEVELS)}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise OnnxCpError(f"threads={threads!r}; it must be an integer of at least 1, or None")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    if quiet:
        options.log_severity_level = 3
    return options


def open_session(model: ModelLike, options: ort.SessionOptions | None = None, *,
                 label: str | None = None) -> ort.InferenceSession:
    """A CPU InferenceSession for ``model`` (a path or a ModelProto).

    onnxruntime's refusal becomes an OnnxCpError naming ``label`` (default: the path, or
    "the model").
    """
    import onnxruntime as ort

    if options is None:
        options = session_options()
    folder = None
    if isinstance(model, onnx.ModelProto):
        label = label or "the model"
        if needs_external_data(model):
            folder = tempfile.TemporaryDirectory(prefix="onnx-cp-session-")
            source = str(save_model(model, Path(folder.name) / "model.onnx"))
        else:
            source = model.SerializeToString()
    else:
        source = os.fspath(model)
        label = label or str(source)
    try:
        session = ort.InferenceSession(source, options, providers=_PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        if folder is not None:
            folder.cleanup()
        raise OnnxCpError(f"{label}: onnxruntime cannot load it ({first_line(exc)}); "
                          "check it with onnx.checker") from exc
    if folder is not None:
        session._onnx_cp_folder = folder  # removed when the session is collected
    return session


def version() -> str:
    """The installed onnxruntime's version."""
    import onnxruntime as ort

    return ort.__version__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnxruntime's run on for pages), or its type."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

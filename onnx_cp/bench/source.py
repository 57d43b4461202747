"""Models to benchmark: load a path or take a ModelProto, and open onnxruntime CPU sessions."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import ModelLike, first_line, open_session

if TYPE_CHECKING:
    import onnxruntime as ort


@dataclass(frozen=True, eq=False)
class ModelSource:
    """One model: a display label, its graph (external weights not loaded), and where it lives."""

    label: str
    proto: onnx.ModelProto
    path: Path | None = None

    def session(self, options: ort.SessionOptions) -> ort.InferenceSession:
        """A CPU session; onnxruntime's refusal becomes an OnnxCpError naming the model."""
        return open_session(self.path if self.path is not None else self.proto, options, label=self.label)


def load_models(models: Sequence[ModelLike]) -> list[ModelSource]:
    """Each path or ModelProto as a ModelSource; labels are made unique."""
    if isinstance(models, (str, os.PathLike, onnx.ModelProto)):
        models = [models]
    if not models:
        raise OnnxCpError("no model to benchmark; pass at least one .onnx file", usage=True)
    sources = [_load(model, i) for i, model in enumerate(models)]
    seen: dict[str, int] = {}
    unique = []
    for source in sources:
        count = seen.get(source.label, 0)
        seen[source.label] = count + 1
        label = source.label if count == 0 else f"{source.label} #{count + 1}"
        unique.append(ModelSource(label, source.proto, source.path))
    return unique


def _load(model: ModelLike, index: int) -> ModelSource:
    if isinstance(model, onnx.ModelProto):
        return ModelSource(model.graph.name or f"model {index + 1}", model)
    if not isinstance(model, (str, os.PathLike)):
        raise OnnxCpError(f"cannot benchmark {type(model).__name__} {model!r}; pass a path or an onnx.ModelProto",
                          usage=True)
    path = Path(model)
    if not path.exists():
        raise OnnxCpError(f"model file {str(path)!r} does not exist; check the path", usage=True)
    if not path.is_file():
        raise OnnxCpError(f"{str(path)!r} is not a file; pass the path of an .onnx model", usage=True)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxCpError(f"{str(path)!r} is not an ONNX model ({first_line(exc)}); pass an .onnx file",
                          usage=True) from exc
    if proto.ir_version < 1 or not proto.HasField("graph"):
        raise OnnxCpError(f"{str(path)!r} is not an ONNX model (no IR version or graph); pass an .onnx file",
                          usage=True)
    return ModelSource(str(path), proto, path)

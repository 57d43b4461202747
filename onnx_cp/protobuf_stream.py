"""Protobuf written piece by piece: a model's fields copied without its weights, each initializer
framed as one more ``graph { initializer { ... } }`` field (parsers merge repeated fields into
one graph), so writing a model never serializes it whole."""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_cp.graph import SUB_BYTE_TYPES

# Protobuf cannot serialize a message of 2 GiB or more; such models go out with external data.
PROTOBUF_LIMIT = 2**31 - 1


def byte_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, or the protobuf limit where protobuf refuses to count that far."""
    try:
        return model.ByteSize()
    except Exception:  # protobuf refuses sizes past 2 GiB on some builds
        return PROTOBUF_LIMIT


_MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


def initializer_frame(data: bytes) -> bytes:
    """What goes before one serialized initializer (``data``) to make it a ModelProto field of its own:
    ``graph { initializer { data } }``."""
    inner = _field_key(_GRAPH_INITIALIZER) + _varint(len(data))
    return _field_key(_MODEL_GRAPH) + _varint(len(inner) + len(data)) + inner


def _field_key(number: int) -> bytes:
    return _varint(number << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def copy_fields(src, dst, skip: tuple[str, ...]) -> None:
    """Copy every field of message ``src`` that is set, except those named in ``skip``, into ``dst``."""
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


def raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
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

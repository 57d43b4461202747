"""Random inputs of the right dtype and shape, one set shared by every benchmarked model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from onnx_cp.errors import OnnxCpError, param, shape_given, shape_param

if TYPE_CHECKING:
    import onnxruntime as ort

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def make_feeds(sessions: Sequence[ort.InferenceSession], labels: Sequence[str], *,
               input_shapes: Mapping[str, tuple[int, ...]], batch: int, seed: int) -> dict[str, np.ndarray]:
    """One input dict for all ``sessions``, which must agree on input names, types and fixed dims.

    A dynamic first dimension becomes ``batch``; any other dynamic dimension must come from
    ``input_shapes`` (a full shape per input, which also overrides ``batch``).
    Floats are standard normal, integers uniform in [0, 10), booleans fair coins.
    """
    first = sessions[0].get_inputs()
    for session, label in zip(sessions[1:], labels[1:]):
        _check_same_inputs(first, session.get_inputs(), labels[0], label)
    names = [arg.name for arg in first]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise OnnxCpError(
            f"{param('input_shapes')} names {', '.join(unknown)}, which {labels[0]} does not have; "
            f"its inputs are {', '.join(names) or '(none)'}",
            usage=True,
        )
    rng = np.random.default_rng(seed)
    return {arg.name: _random(rng, arg, _shape(arg, input_shapes.get(arg.name), batch, labels[0]), labels[0])
            for arg in first}


def describe_feeds(feeds: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name}={'x'.join(map(str, a.shape))} {a.dtype}" for name, a in feeds.items())


def _shape(arg, given: tuple[int, ...] | None, batch: int, label: str) -> tuple[int, ...]:
    dims = list(arg.shape)
    if given is not None:
        if len(given) != len(dims):
            raise OnnxCpError(
                f"{shape_given(arg.name, given)} has {len(given)} dimensions but "
                f"{label} declares {len(dims)} ({_show(dims)}); give all {len(dims)}",
                usage=True,
            )
        for axis, (want, got) in enumerate(zip(dims, given)):
            if isinstance(want, int) and want > 0 and want != got:
                raise OnnxCpError(
                    f"{shape_given(arg.name, given)} sets dimension {axis} to {got} but "
                    f"{label} fixes it at {want} ({_show(dims)})",
                    usage=True,
                )
        return tuple(given)
    shape = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
        else:
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if i == 0 else "N")
                               for i, d in enumerate(dims))
            raise OnnxCpError(
                f"input {arg.name!r} of {label} has a dynamic dimension {axis} ({dim!r} in {_show(dims)}); "
                f"fix it with {shape_param(arg.name, example)}",
                usage=True,
            )
    return tuple(shape)


def _random(rng: np.random.Generator, arg, shape: tuple[int, ...], label: str) -> np.ndarray:
    dtype = _DTYPES.get(arg.type)
    if dtype is None:
        raise OnnxCpError(f"input {arg.name!r} of {label} has type {arg.type}, which bench cannot generate; "
                          f"it feeds only numeric and boolean tensors")
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _check_same_inputs(first, other, first_label: str, label: str) -> None:
    a = {arg.name: arg for arg in first}
    b = {arg.name: arg for arg in other}
    if set(a) != set(b):
        raise OnnxCpError(
            f"{label} has inputs {', '.join(sorted(b))} but {first_label} has {', '.join(sorted(a))}; "
            f"bench feeds the same inputs to every model, so compare models with the same inputs"
        )
    for name, arg in a.items():
        other_arg = b[name]
        fixed_a = [d if isinstance(d, int) and d > 0 else None for d in arg.shape]
        fixed_b = [d if isinstance(d, int) and d > 0 else None for d in other_arg.shape]
        clash = len(fixed_a) != len(fixed_b) or any(x is not None and y is not None and x != y
                                                    for x, y in zip(fixed_a, fixed_b))
        if arg.type != other_arg.type or clash:
            raise OnnxCpError(
                f"input {name!r} is {arg.type} {_show(arg.shape)} in {first_label} but "
                f"{other_arg.type} {_show(other_arg.shape)} in {label}; bench feeds the same inputs to every model"
            )


def _show(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"

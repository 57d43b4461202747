"""Classification accuracy of an ONNX model in onnxruntime (CPU execution provider).

    x, y = load_dataset("models/mnist_test.npz")
    acc = evaluate("models/mnist_cnn.onnx", x, y)      # Accuracy(top1=0.99.., top5=.., count=10000)

The model's first input is fed ``x`` (N x C x H x W) in batches, and its first output is read
as logits (N x classes). A model whose batch dimension is fixed runs in batches of that size
(one sample at a time when it is 1). Ties count against the true label: a model that outputs
the same logit for every class scores 0, not 100%.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import open_session, session_options

# onnxruntime input type -> numpy dtype that x is cast to
_FLOAT_INPUTS = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class Accuracy:
    """Fractions in [0, 1] of ``count`` samples whose label is the top-1 / in the top-5 logits.

    ``top5`` uses k = min(5, number of classes).
    """

    top1: float
    top5: float
    count: int


def load_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``(x, y)`` from an .npz with arrays ``x`` and ``y``, or ``(x, None)`` from an .npy.

    ``x`` must be N x C x H x W floating point (returned as float32); ``y`` N integer labels
    (returned as int64). Raises OnnxCpError naming the file, the problem and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise OnnxCpError(f"{path}: no such file; pass an .npz with arrays x (N,C,H,W) and y (N,)")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise OnnxCpError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; "
            "save the data with np.savez(path, x=x, y=y) (.npz) or np.save (.npy, x only)"
        )
    try:
        if suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as arrays:
                if "x" not in arrays.files:
                    raise OnnxCpError(
                        f"{path}: no array 'x' (it holds {sorted(arrays.files)}); "
                        "save the images as np.savez(path, x=images, y=labels)"
                    )
                x = arrays["x"]
                y = arrays["y"] if "y" in arrays.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise OnnxCpError(f"{path}: not a readable numpy {suffix} file ({exc}); re-save it with numpy") from exc
    return _check_data(x, y, str(path))


def predict(
    model: onnx.ModelProto | str | Path,
    x: np.ndarray,
    batch_size: int = 256,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Logits (N x classes, float32) of the model's first output for images ``x`` (N x C x H x W).

    ``threads`` sets onnxruntime's intra-op thread count (its default when None).
    """
    if batch_size < 1:
        raise OnnxCpError(f"batch_size={batch_size}; it must be at least 1")
    session = _session(model, threads)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    extra = [i.name for i in session.get_inputs()[1:]]
    if extra:
        raise OnnxCpError(
            f"the model has inputs {extra} besides {inp.name!r}; evaluate feeds only the first, "
            "so make the others initializers"
        )
    dtype = _FLOAT_INPUTS.get(inp.type)
    if dtype is None:
        raise OnnxCpError(f"input {inp.name!r} has type {inp.type}; evaluate feeds float images only")
    want = inp.shape[1:]
    if len(inp.shape) != x.ndim or any(
        isinstance(d, int) and d != n for d, n in zip(want, x.shape[1:])
    ):
        raise OnnxCpError(
            f"input {inp.name!r} has shape {_dims(inp.shape)} but the images are "
            f"{_dims(x.shape)}; pass data of the model's shape"
        )
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch_size
    chunks = []
    for start in range(0, len(x), step):
        batch = x[start : start + step].astype(dtype, copy=False)
        n = len(batch)
        if fixed and n < fixed:  # pad the last batch up to the fixed size, then drop the padding
            batch = np.concatenate([batch, np.zeros((fixed - n, *batch.shape[1:]), dtype)])
        logits = np.asarray(session.run([out.name], {inp.name: batch})[0])[:n]
        if logits.ndim < 2 or any(d != 1 for d in logits.shape[2:]):
            raise OnnxCpError(
                f"output {out.name!r} has shape {_dims(logits.shape)}; expected N x classes logits "
                "as the model's first output"
            )
        chunks.append(logits.reshape(n, -1).astype(np.float32, copy=False))
    return np.concatenate(chunks)


def evaluate(
    model: onnx.ModelProto | str | Path,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    batch_size: int = 256,
    threads: int | None = None,
) -> Accuracy:
    """Top-1 and top-5 accuracy of ``model`` on images ``x`` with integer labels ``y``."""
    if y is None:
        raise OnnxCpError("the data has no labels; use an .npz with arrays x and y to measure accuracy")
    x, y = _check_data(np.asarray(x), np.asarray(y), "the data")
    logits = predict(model, x, batch_size, threads=threads)
    classes = logits.shape[1]
    if y.min() < 0 or y.max() >= classes:
        raise OnnxCpError(
            f"labels range {y.min()}..{y.max()} but the model outputs {classes} classes; "
            "labels must be class indices 0..classes-1"
        )
    return Accuracy(
        top1=float(np.mean(_in_top_k(logits, y, 1))),
        top5=float(np.mean(_in_top_k(logits, y, min(5, classes)))),
        count=len(y),
    )


def _in_top_k(logits: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Per sample: fewer than k other classes score at least the true label's logit (NaN: False)."""
    true = logits[np.arange(len(y)), y][:, None]
    others_ahead = (logits >= true).sum(axis=1) - 1
    return (others_ahead < k) & ~np.isnan(true[:, 0])


def _check_data(x: np.ndarray, y: np.ndarray | None, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    if x.ndim != 4:
        raise OnnxCpError(
            f"{where}: x has shape {_dims(x.shape)}; expected N x C x H x W "
            "(add a channel axis with x[:, None] for grey images)"
        )
    if len(x) == 0:
        raise OnnxCpError(f"{where}: x holds no images; pass at least one")
    if not np.issubdtype(x.dtype, np.floating):
        raise OnnxCpError(
            f"{where}: x has dtype {x.dtype}; store it as float32 scaled the way the model expects "
            "(e.g. x.astype(np.float32) / 255)"
        )
    x = x.astype(np.float32, copy=False)
    if y is None:
        return x, None
    if y.ndim != 1 or len(y) != len(x):
        raise OnnxCpError(
            f"{where}: y has shape {_dims(y.shape)} but x holds {len(x)} images; "
            "store one label per image as a 1-D array"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise OnnxCpError(
            f"{where}: y has dtype {y.dtype}; labels must be integer class indices "
            "(store y.astype(np.int64))"
        )
    return x, y.astype(np.int64, copy=False)


def _session(model: onnx.ModelProto | str | Path, threads: int | None):
    if threads is not None and threads < 1:
        raise OnnxCpError(f"threads={threads}; it must be at least 1")
    if not isinstance(model, onnx.ModelProto) and not Path(model).is_file():
        raise OnnxCpError(f"{model}: no such file; pass the path of an .onnx model")
    return open_session(model, session_options(threads=threads))


def _dims(shape) -> str:
    return "x".join(str(d) if d not in (None, "") else "?" for d in shape) or "scalar"

"""A model's first output on many samples, batch by batch, with the samples on axis 0.

    for start, out in output_batches(model, x):        # out: (n, ...) for x[start:start + n]
        predicted = out.argmax(class_axis(out.ndim))

Models run in onnxruntime's CPU execution provider. A dynamic batch dim takes ``batch_size``
samples a run; a fixed one takes its own size (the last batch padded, the padding dropped).
Which output axis holds the samples is found from the first batch: the one whose size is the
number fed. Where several are (a CTC output (T, N, C) with T == N), a run of one sample tells
them apart; where the batch is fixed and no run can, axis 0 is taken. The classes lie on the
last axis, except for 4-D maps (N, C, H, W), whose classes are on axis 1.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from onnx_cp.accuracy.data import shape_text
from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import ModelLike, open_session, session_options


def class_axis(ndim: int) -> int:
    """The axis of the classes in an output of ``ndim`` dims whose samples are on axis 0."""
    return 1 if ndim in (2, 4) else ndim - 1


def output_batches(model: ModelLike, x: np.ndarray, *, batch_size: int = 64, threads: int | None = None,
                   label: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, output)`` per batch of ``x``, each output of the model's first output with its
    samples moved to axis 0. ``label`` names the model in errors."""
    if batch_size < 1:
        raise OnnxCpError(f"batch_size={batch_size}; it must be at least 1")
    session = open_session(model, session_options(threads=threads), label=label)
    feed, fetch = session.get_inputs()[0].name, session.get_outputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None

    def run(batch: np.ndarray) -> np.ndarray:
        if fixed and len(batch) < fixed:
            batch = np.concatenate([batch, np.zeros((fixed - len(batch), *batch.shape[1:]), batch.dtype)])
        return np.asarray(session.run([fetch], {feed: batch})[0])

    step = fixed or batch_size
    axis = None
    for start in range(0, len(x), step):
        batch = x[start:start + step]
        out = run(batch)
        if axis is None:
            axis = _batch_axis(out, fixed or len(batch), fetch,
                               probe=None if fixed else lambda: run(batch[:1]).shape)
        yield start, np.moveaxis(out, axis, 0)[:len(batch)]


def _batch_axis(out: np.ndarray, fed: int, name: str, probe) -> int:
    """The axis of ``out`` that holds the ``fed`` samples of a run; ``probe()`` gives the output's
    shape for one sample, or is None where the batch is fixed."""
    candidates = [a for a, size in enumerate(out.shape) if size == fed]
    if not candidates:
        raise OnnxCpError(f"output {name!r} has shape {shape_text(out.shape)} for a batch of {fed}: no axis holds the "
                          "samples, so predictions cannot be told apart; score it with a MODULE:FUNCTION metric",
                          usage=True)
    if len(candidates) > 1 and probe is not None and fed > 1:
        single = probe()
        candidates = [a for a in candidates if a < len(single) and single[a] == 1] or candidates
    return candidates[0]


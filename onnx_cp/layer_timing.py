"""Time every candidate layer in place: onnxruntime's profiler on whole models.

``auto`` realization profiles the model as it is, with every chosen layer in cp4 form, and
with every chosen layer in cp3 form, then keeps each layer's fastest form. Timing layers in
place, not alone, counts what onnxruntime does around them: Conv+activation fusion and the
NCHWc layout, whose reorders a lone layer pays but a chain of convolutions shares.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import onnx

# models -> per model, {Conv output tensor name: median ms per run of everything attributed to it}
Timer = Callable[[Sequence[onnx.ModelProto]], list[dict[str, float]]]


@dataclass(frozen=True)
class TimingOptions:
    threads: int = 1
    opt_level: str = "all"
    warmup: int = 5
    runs: int = 30


def profile_timer(options: TimingOptions, input_shapes: Mapping[str, tuple[int, ...]]) -> Timer:
    def measure(models: Sequence[onnx.ModelProto]) -> list[dict[str, float]]:
        from onnx_cp.bench import profile_outputs

        return [layers for _, layers in profile_outputs(
            list(models), threads=options.threads, warmup=options.warmup, runs=options.runs,
            input_shapes=input_shapes, opt_level=options.opt_level)]

    return measure

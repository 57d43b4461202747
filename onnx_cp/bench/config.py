"""The settings of one benchmark, shared by the Python API and ``onnx-cp bench``.

Every check names the offending value and the parameter that fixes it (``onnx_cp.errors.param``:
the CLI prints its flag instead).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from onnx_cp import runtime
from onnx_cp.errors import OnnxCpError, param, shape_given, shape_param
from onnx_cp.runtime import OPT_LEVELS

if TYPE_CHECKING:
    import onnxruntime as ort


@dataclass(frozen=True)
class BenchConfig:
    """How sessions are built and how many times they run.

    threads: onnxruntime intra-op threads per session (inter-op is 1, execution sequential).
    warmup: untimed runs per model before measuring. runs: timed runs per model.
    input_shapes: full shapes for graph inputs with dynamic dimensions (name -> dims).
    batch: the size of a dynamic first dimension when ``input_shapes`` does not fix it.
    opt_level: onnxruntime graph optimization level, one of ``OPT_LEVELS``.
    seed: seeds the random inputs.
    blocks / agreement: the timed runs come in blocks of ``runs``, repeated (at most ``blocks``
        in all) until every model's median agrees across blocks within ``agreement`` (a relative
        half-range); the statistics pool every block (docs/latency.md, "Measurement protocol").
    """

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    batch: int = 1
    opt_level: str = "all"
    seed: int = 0
    blocks: int = 4
    agreement: float = 0.03

    def __post_init__(self) -> None:
        _at_least("threads", self.threads, 1, "1 (the default) or the number of cores to use")
        _at_least("warmup", self.warmup, 0, "10 (the default) or 0 to skip warm-up")
        _at_least("runs", self.runs, 1, "50 (the default) or more for steadier medians")
        _at_least("batch", self.batch, 1, "1 (the default)")
        _at_least("blocks", self.blocks, 1, "4 (the default) or 1 for a single block of runs")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise OnnxCpError(f"{param('seed', repr(self.seed))} is not an integer; pass e.g. {param('seed', '0')}",
                              usage=True)
        if self.opt_level not in OPT_LEVELS:
            raise OnnxCpError(
                f"{param('opt_level', repr(self.opt_level))} is unknown; use one of {', '.join(OPT_LEVELS)}",
                usage=True,
            )
        shapes = {}
        for name, dims in dict(self.input_shapes or {}).items():
            dims = tuple(dims)
            if not dims or not all(isinstance(d, int) and d >= 1 for d in dims):
                raise OnnxCpError(
                    f"{shape_given(name, dims)} needs positive integer dimensions; "
                    f"write it like {shape_param(name, (1, 3, 224, 224))}",
                    usage=True,
                )
            shapes[name] = dims
        object.__setattr__(self, "input_shapes", MappingProxyType(shapes))

    def session_options(self) -> ort.SessionOptions:
        """Options for one CPU session: these threads, this optimization level, sequential."""
        return runtime.session_options(threads=self.threads, opt_level=self.opt_level)

    def to_dict(self) -> dict:
        return {
            "threads": self.threads, "warmup": self.warmup, "runs": self.runs, "blocks": self.blocks,
            "agreement": self.agreement, "batch": self.batch,
            "opt_level": self.opt_level, "seed": self.seed,
            "input_shapes": {name: list(dims) for name, dims in self.input_shapes.items()},
            "onnxruntime": runtime.version(),
        }


def _at_least(name: str, value, minimum: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OnnxCpError(f"{param(name, repr(value))} must be an integer >= {minimum}; pass {fix}", usage=True)

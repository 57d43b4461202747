"""What the INT8 decision found: per node the form it kept and its times, and the whole model's."""
from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

FLOAT, INT8 = "float", "int8"


@dataclass(frozen=True)
class NodeForm:
    """One Conv, Gemm or MatMul: the form it has in the returned model, and why.

    node, output: its name and first output in the float model (the profile's key).
    float_ms, int8_ms: its median time in the float model and with every node in int8 (its
    quantize/dequantize pairs included); None where it was not timed.
    """

    node: str
    output: str
    op: str
    form: str
    float_ms: float | None
    int8_ms: float | None
    reason: str

    def to_dict(self) -> dict:
        return {"node": self.node, "output": self.output, "op": self.op, "form": self.form,
                "float_ms": self.float_ms, "int8_ms": self.int8_ms, "reason": self.reason}


@dataclass(frozen=True)
class Int8Result:
    """The model to use (INT8 where that measured faster, else the float model as given).

    float_ms, int8_ms: whole-model medians of the float model and of the fastest INT8 candidate,
    from one alternated run. error: the returned model's relative output error against the float
    model on the held-back inputs (0.0 when the float model is returned; None without them).
    """

    model: onnx.ModelProto
    quantized: bool
    nodes: tuple[NodeForm, ...]
    float_ms: float
    int8_ms: float
    error: float | None
    notes: tuple[str, ...]

    @property
    def speedup(self) -> float:
        """The returned model's speed-up over the float model (1.0 when that is what it is)."""
        if not self.quantized:
            return 1.0
        return self.float_ms / self.int8_ms if self.int8_ms > 0 else math.inf

    def to_dict(self) -> dict:
        return {"quantized": self.quantized, "float_ms": self.float_ms, "int8_ms": self.int8_ms,
                "speedup": self.speedup, "error": self.error, "nodes": [n.to_dict() for n in self.nodes],
                "notes": list(self.notes)}

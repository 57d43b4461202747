"""The quantize stage (``quantize='int8'``): the low-rank model in static INT8, each Conv, Gemm and
MatMul in int8 only where that measured faster (onnx_cp.quantize), and the four whole-model
figures a user compares, timed in one alternated run: the input, INT8 alone, low-rank alone and
low-rank + INT8, with each one's output error against the input on the held-back samples."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from onnx_cp.errors import param
from onnx_cp.stages.context import Rewrite


@dataclass(frozen=True)
class QuantizationSummary:
    """The report's ``quantization`` entry."""

    original_ms: float
    int8_ms: float  # INT8 alone: the input quantized as onnxruntime's static quantization does
    lowrank_ms: float
    lowrank_int8_ms: float  # what is written
    int8_error: float  # output errors against the input on the held-back samples
    lowrank_error: float
    lowrank_int8_error: float
    quantized: bool  # whether int8 paid on the low-rank model (else it stays float, and says so)
    layers: list[dict]  # per Conv/Gemm/MatMul node: its form, times and why
    notes: list[str]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["speedups"] = {name: self.original_ms / ms for name, ms in
                           (("int8", self.int8_ms), ("lowrank", self.lowrank_ms), ("lowrank_int8", self.lowrank_int8_ms))
                           if ms > 0}
        return out


def quantize(rw: Rewrite) -> None:
    if rw.config.quantize is None:
        return
    from onnx_cp.quantize import int8_error, quantize_fastest, quantize_int8

    if rw.progress:
        rw.progress("int8: quantizing and timing each node in onnxruntime", 0, 1)
    data = rw.data
    calibration = data.int8_inputs
    held = data.held_back if len(data.held_back) else calibration
    lowrank = rw.final
    result = quantize_fastest(lowrank, calibration, rw.measurement, held_back=held)
    alone = rw.int8_input if rw.int8_input is not None else quantize_int8(rw.model, calibration)
    if rw.progress:
        rw.progress("int8: the input, INT8 alone, low-rank and low-rank + INT8 timed together", 0, 1)
    models = [rw.model, alone, lowrank] + ([result.model] if result.quantized else [])
    times = [t.median for t in rw.measurement.whole(models)]
    original, int8, low, both = times if result.quantized else [*times, times[2]]  # float: the low-rank model
    errors = [int8_error(rw.model, m, held, threads=rw.config.threads) for m in (alone, lowrank, result.model)]
    site_of = {n: r.site.name for r in rw.rewritten() for n in rw.new_names.get(r.site.key, [])}
    layers = [{"layer": n.node, "site": site_of.get(n.node, n.node), "op": n.op, "form": n.form,
               "ms": n.int8_ms if n.form == "int8" else n.float_ms, "float_ms": n.float_ms, "int8_ms": n.int8_ms,
               "reason": n.reason} for n in result.nodes]
    rw.quantization = QuantizationSummary(original, int8, low, both, *errors, result.quantized, layers,
                                          list(result.notes))
    rw.final = result.model
    if not result.quantized:
        rw.notes.append(f"{param('quantize', repr('int8'), cli='int8')}: int8 did not pay on the rewritten model, "
                        f"which is written in float (float {result.float_ms:.3f} ms, INT8 {result.int8_ms:.3f} ms)")

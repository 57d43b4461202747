"""The verify stage: the written model against the input in onnxruntime. With timed forms
(``realize='auto'``) a rewritten model slower than the input gives every layer its Conv back, so
the result is never slower; a measured --target-speedup missed by more than 10% gets a note."""
from __future__ import annotations

from onnx_cp.errors import param
from onnx_cp.measure import SpeedCheck
from onnx_cp.splice import splice
from onnx_cp.stages.context import Rewrite

# A written model this far off --target-speedup is noted.
SHORTFALL = 0.1


def verify(rw: Rewrite) -> None:
    config, measurement = rw.config, rw.measurement
    speed = _measured_by_selection(rw)
    # a model in INT8 is timed too where no layer kept a low-rank form (--quantize alone, or every
    # form slower than its Conv in int8): it is still not the input
    quantized = rw.quantization is not None and rw.quantization.quantized
    if speed is None and measurement is not None and config.measure and (rw.rewritten() or quantized):
        if rw.progress:
            rw.progress("verify: timing the rewritten model against the input", 0, 1)
        speed = measurement.compare(rw.model, rw.final)
        if speed.speedup < 1.0 and config.realize == "auto" and rw.rewritten():
            rw.notes.append(f"the rewritten model measured {speed.speedup:.2f}x the input's speed "
                            f"({speed.original_ms:.3f} -> {speed.rewritten_ms:.3f} ms); every layer keeps its Conv")
            for r in rw.rewritten():
                r.kept_because = "the whole rewritten model was slower than the input"
            rw.final, rw.new_names = splice(rw.model, [])
            speed = SpeedCheck(speed.original_ms, speed.original_ms, speed.spread)
            if rw.calibration is not None:  # the report describes the model written: the input
                rw.calibration.measure(rw.model, rw.final)
    if speed and rw.rewritten() and config.selection is not None and config.selection.target_speedup:
        rw.notes.extend(_shortfall(speed.speedup, config.selection.target_speedup, rw))
    rw.speed = speed


def _measured_by_selection(rw: Rewrite) -> SpeedCheck | None:
    """The kept measurement round of --target-speedup, when it timed exactly the final model
    (a forced form: nothing changed after the selection)."""
    measured = rw.selection.measured if rw.selection is not None else None
    if measured is None or rw.config.realize == "auto":
        return None
    return SpeedCheck(measured.original_ms, measured.rewritten_ms, measured.spread)


def _shortfall(measured: float, target: float, rw: Rewrite) -> list[str]:
    """A note when the written model's measured speed-up is more than 10% off the target."""
    if abs(measured / target - 1) <= SHORTFALL:
        return []
    rounds = len(rw.selection.rounds) if rw.selection is not None else 0
    return [f"the rewritten model measured {measured:.2f}x against {param('selection.target_speedup', f'{target:g}')}, "
            f"{'short of' if measured < target else 'past'} it by {abs(measured / target - 1):.0%}, where the layers' costs "
            f"predicted it ({rounds} measured round(s) of the whole model could not close the gap; the report's "
            f"rank_selection lists them)"]

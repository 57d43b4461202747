"""The hold stage (``max_drop``): score the written model on the data's choosing part and give
layers back, the worst accuracy per millisecond first, while the drop is exceeded; then measure
the drop on the held-back part, which chose nothing: that is the drop the report states and the
command promises. A rewrite that keeps no layer fails, naming the best drop and speed reached."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from onnx_cp.accuracy import max_drop_param
from onnx_cp.errors import OnnxCpError, param
from onnx_cp.splice import splice
from onnx_cp.stages.context import LayerRecord, Rewrite
from onnx_cp.stages.quantize import quantize


@dataclass(frozen=True)
class AccuracySummary:
    """The report's ``accuracy`` entry; drops in ``max_drop``'s units (negative: a gain)."""

    metric: str
    drop_kind: str
    max_drop: float
    samples: dict  # {"choosing": n, "held_back": m}
    original: float  # on the held-back part
    written: float
    drop: float
    within: bool
    choosing: dict  # the same on the choosing part: {"original", "written", "drop"}
    given_back: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def hold(rw: Rewrite) -> None:
    target = rw.accuracy
    if target is None:
        return
    if rw.progress:
        rw.progress("accuracy: scoring the written model", 0, 1)
    score = target.score(rw.final)
    given = []
    for unit in _worst_first(rw):
        if target.allows(score):
            break
        for record in unit:
            record.kept_because = "given back: the whole model's drop exceeded max_drop on the choosing data"
            given.append(record.site.name)
        _rebuild(rw)
        score = target.score(rw.final)
        if rw.progress:
            shown = unit[0].site.name + (f" and {len(unit) - 1} more sharing its weight" if len(unit) > 1 else "")
            rw.progress(f"accuracy: gave back {shown}, drop {target.drop_of(score):.4g}", len(given), 0)
    held = target.holdout
    written = held.score(rw.final)
    drop = target.drop.of(written, held.original)
    within = target.drop.allows(written, held.original)
    rw.held = AccuracySummary(target.metric.name, target.drop.kind, target.drop.max_drop,
                              {"choosing": len(target.split.selection_rows), "held_back": len(target.split.holdout_rows)},
                              held.original, written, drop, within,
                              {"original": target.baseline, "written": score, "drop": target.drop_of(score)}, given)
    if not rw.rewritten():
        raise OnnxCpError(_none_found(rw))
    if not within:
        rw.notes.append(f"the held-back part's {target.metric.name} dropped {drop:.4g}, past "
                        f"{max_drop_param(target.drop.max_drop)}, where the choosing part's drop "
                        f"({target.drop_of(score):.4g}) held: the two parts disagree by more than the allowed drop; "
                        f"give more data (or a larger {param('holdout')})")


def _worst_first(rw: Rewrite) -> list[list[LayerRecord]]:
    """The rewritten layers, those costing the most metric per millisecond saved first (layers a
    rank rule fixed, without a sensitivity row, last), each with the layers its row scored with
    (those reading its weight): they are given back together."""
    rows = {name: row for row in rw.sensitivity for name in row.members}
    units: dict[int, list[LayerRecord]] = {}
    for record in rw.rewritten():
        row = rows.get(record.site.name)
        units.setdefault(id(row) if row is not None else id(record), []).append(record)

    def badness(unit: list[LayerRecord]) -> float:
        row = rows.get(unit[0].site.name)
        return -1.0 if row is None or row.drop is None else row.drop / max(row.ms_saved, 1e-9)

    return sorted(units.values(), key=badness, reverse=True)


def _rebuild(rw: Rewrite) -> None:
    """The written model again from the layers still rewritten (recovered where they were)."""
    replacements = [r.replacement() for r in rw.rewritten()]
    if rw.calibration is not None:  # recovered biases and distilled weights, where there are any
        rw.final, rw.new_names = rw.calibration.written(rw.model, replacements)
    else:
        rw.final, rw.new_names = splice(rw.model, replacements)
    if rw.config.quantize is not None:
        quantize(rw)


def _none_found(rw: Rewrite) -> str:
    trials = (rw.selection.trials if rw.selection is not None else None) or []
    faster = [t for t in trials if t["predicted_speedup"] > 1.0]
    held = [t for t in faster if t["within"]]
    allowed = max_drop_param(rw.accuracy.drop.max_drop)
    if held:  # the search found an allocation within the drop, and timing gave every layer back
        best = max(held, key=lambda t: t["predicted_speedup"])
        return (f"the fastest allocation within {allowed} (drop {best['drop']:.4g}, predicted "
                f"{best['predicted_speedup']:.2f}x) made no layer faster once timed in onnxruntime, so none is "
                f"rewritten; allow more drop, or give more time or calibration data")
    best = min(faster, key=lambda t: t["drop"]) if faster else None
    reached = (f"; the least drop a faster model reached was {best['drop']:.4g} at a predicted "
               f"{best['predicted_speedup']:.2f}x" if best else "")
    return (f"no layer could be rewritten within {allowed} of {rw.accuracy.metric.name}{reached}; allow more "
            "drop, or give more time or calibration data")

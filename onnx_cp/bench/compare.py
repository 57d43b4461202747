"""Side by side: an original model's layers against the same layers after a CP rewrite."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from onnx_cp.bench.latency import LatencyStats
from onnx_cp.bench.profile import LayerTime, NodeProfile


@dataclass(frozen=True)
class LayerComparison:
    """One row: times in ms; speedup = original / rewritten; mac_ratio = macs_before / macs_after
    (from the rewrite's metadata); efficiency = speedup / mac_ratio (1.0: wall time fell exactly as
    much as multiply-adds did); shares are of each model's summed layer time."""

    layer: str
    op: str
    original_ms: float | None
    rewritten_ms: float | None
    speedup: float | None
    mac_ratio: float | None
    efficiency: float | None
    share_original: float | None
    share_rewritten: float | None
    rewritten: bool
    rank: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Rows in the original's graph order; ``cp_layers``: the rewritten layers summed;
    ``whole_model``: from whole-model latency medians when given, else from profile totals."""

    original: str
    rewritten: str
    layers: tuple[LayerComparison, ...]
    cp_layers: LayerComparison | None
    whole_model: LayerComparison
    whole_model_from: str  # "latency" | "profile"

    def to_dict(self) -> dict:
        return {"original": self.original, "rewritten": self.rewritten,
                "layers": [row.to_dict() for row in self.layers],
                "cp_layers": self.cp_layers.to_dict() if self.cp_layers else None,
                "whole_model": self.whole_model.to_dict(), "whole_model_from": self.whole_model_from}


def compare(original: NodeProfile, rewritten: NodeProfile, *,
            latency: tuple[LatencyStats, LatencyStats] | None = None) -> Comparison:
    """Match layers by name, then by the tensors they output (renamed unnamed nodes), and compare."""
    unmatched = list(rewritten.layers)
    pairs: list[tuple[LayerTime | None, LayerTime | None]] = []
    for layer in original.layers:
        match = next((r for r in unmatched if r.layer == layer.layer), None)
        if match is None and layer.outputs:
            match = next((r for r in unmatched if set(r.outputs) & set(layer.outputs)), None)
        if match is not None:
            unmatched.remove(match)
        pairs.append((layer, match))
    pairs.extend((None, r) for r in unmatched)
    rows = [_row(a, b, rewritten) for a, b in pairs]

    cp_rows = [row for row in rows if row.rewritten]
    cp_total = None
    if cp_rows:
        before = [rewritten.cp_layers[row.layer].macs_before for row in cp_rows]
        after = [rewritten.cp_layers[row.layer].macs_after for row in cp_rows]
        ratio = sum(before) / sum(after) if all(before) and all(after) else None
        cp_total = _summary("rewritten layers", sum(r.original_ms or 0.0 for r in cp_rows),
                            sum(r.rewritten_ms or 0.0 for r in cp_rows), ratio,
                            sum(r.share_original or 0.0 for r in cp_rows),
                            sum(r.share_rewritten or 0.0 for r in cp_rows), rewritten=True)
    if latency is not None:
        whole = _summary("whole model (latency)", latency[0].median, latency[1].median, None, 1.0, 1.0)
        source = "latency"
    else:
        whole = _summary("whole model (profile)", original.total_ms, rewritten.total_ms, None, 1.0, 1.0)
        source = "profile"
    return Comparison(original.label, rewritten.label, tuple(rows), cp_total, whole, source)


def _row(a: LayerTime | None, b: LayerTime | None, rewritten: NodeProfile) -> LayerComparison:
    name = a.layer if a is not None else b.layer
    cp = rewritten.cp_layers.get(b.layer) if b is not None else None
    row = _summary(name, a.ms if a else None, b.ms if b else None, cp.mac_ratio if cp else None,
                   a.share if a else None, b.share if b else None)
    return LayerComparison(name, (a or b).op, row.original_ms, row.rewritten_ms, row.speedup, row.mac_ratio,
                           row.efficiency, row.share_original, row.share_rewritten, cp is not None,
                           cp.rank if cp else None)


def _summary(name: str, original_ms: float | None, rewritten_ms: float | None, mac_ratio: float | None,
             share_original: float | None, share_rewritten: float | None,
             rewritten: bool = False) -> LayerComparison:
    speedup = original_ms / rewritten_ms if original_ms is not None and rewritten_ms else None
    efficiency = speedup / mac_ratio if speedup is not None and mac_ratio else None
    return LayerComparison(name, "", original_ms, rewritten_ms, speedup, mac_ratio, efficiency,
                           share_original, share_rewritten, rewritten)

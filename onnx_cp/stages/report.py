"""The report stage: one row per site from its record, the provenance entry, and the ONNX checker
on the written model (a failure there is a bug of the rewriter, never the user's)."""
from __future__ import annotations

import onnx

from onnx_cp import decompositions, provenance
from onnx_cp.machine import describe_machine
from onnx_cp.model_io import checkable_copy
from onnx_cp.report import LayerReport, RewriteReport, RewriteResult
from onnx_cp.sites import Site
from onnx_cp.stages.context import LayerRecord, Rewrite
from onnx_cp.stages.forms import FORM_MARGIN


def finish(rw: Rewrite) -> RewriteResult:
    if rw.progress:
        rw.progress("done", 1, 1)
    config = rw.config
    report = RewriteReport([_row(site, rw.record(site.key), rw) for site in rw.sites], config.method, rw.notes)
    report.speed = rw.speed.to_dict() if rw.speed else None
    report.calibration = rw.calibration.summary().to_dict() if rw.calibration is not None else None
    report.rank_selection = rw.selection.to_dict() if rw.selection is not None else None
    report.machine = describe_machine().to_dict() if rw.measurement is not None else None
    report.quantization = rw.quantization.to_dict() if rw.quantization is not None else None
    report.accuracy = rw.held.to_dict() if rw.held is not None else None
    report.sensitivity = [_decided(row, rw) for row in rw.sensitivity] or None
    provenance.record(rw.final, provenance.entry(report.method, report.rewritten))
    try:
        # Weights stubbed out: checking the model itself would serialize it (and fail past 2 GiB).
        onnx.checker.check_model(checkable_copy(rw.final))
    except onnx.checker.ValidationError as exc:  # a bug in the rewriter, never the user's fault
        raise RuntimeError(f"rewritten model fails the ONNX checker: {exc}") from exc
    return RewriteResult(rw.final, report)


def _decided(row, rw: Rewrite) -> dict:
    """A sensitivity row with what became of its layer."""
    record = next((r for r in rw.records if r.site.name == row.layer), None)
    if record is not None and record.rewritten:
        decision = f"rewritten ({record.form}, rank {decompositions.for_form(record.form).label(record.decision.rank)})"
    elif record is not None and record.kept_because and record.kept_because.startswith("given back"):
        decision = "given back"
    else:
        decision = "kept"
    return {**row.to_dict(), "decision": decision}


def _row(site: Site, record: LayerRecord | None, rw: Rewrite) -> LayerReport:
    """The report row of one site, from what was decided for it."""
    row = site.report_row()
    if not site.eligible:
        row.status, row.reason = "ineligible", site.reason
        return row
    if record is None:
        row.status, row.reason = "skipped", "not selected by the layers / exclude patterns"
        return row
    d = record.decision
    row.rank_requested, row.rank_capped, row.proxy_error, row.cost = d.requested, d.capped, d.proxy, d.cost
    if d.rank is None:
        row.status, row.reason = ("kept" if d.capped else "skipped"), d.reason
        return row
    form = record.form if record.form not in (None, "original") else None
    name = decompositions.for_form(form).name if form else site.decomposition(rw.config.decomposition)
    row.decomposition = name
    row.rank = decompositions.get(name).label(d.rank) if name != "auto" else d.rank
    if record.timings:
        row.timings_ms = {**record.timings, **record.extra_timings}
    fit = record.fit
    if fit is not None:
        row.rel_error, row.fit_seconds = record.kernel_error, fit.seconds
        row.degeneracy, row.max_term_norm, row.stabilized = fit.degeneracy, fit.max_term_norm, fit.stabilized
    if record.recovery is not None:
        row.output_error_before, row.output_error_after, row.recovery = record.recovery.report()
    label = "candidate" if name == "auto" else decompositions.get(name).display
    if form is None:
        row.status, row.realization = "kept", "original"
        row.reason = f"no {label} form at rank {row.rank} was faster in onnxruntime by {FORM_MARGIN:.0%} (" + ", ".join(
            f"{k} {v:.3f} ms" for k, v in record.timings.items()) + "); not fitted"
        return row
    if record.kept_because is not None:
        row.status, row.realization = "kept", "original"
        timed = ", ".join(f"{k} {v:.3f} ms" for k, v in (row.timings_ms or {}).items())
        row.reason = f"no {label} form was faster in onnxruntime: {record.kept_because}" + (f" ({timed})" if timed else "")
        return row
    after = site.cost_after(form, d.rank)
    row.status, row.realization = "rewritten", form
    row.macs_after, row.params_after = after.macs, after.params
    row.new_nodes = rw.new_names.get(site.key, [])
    return row


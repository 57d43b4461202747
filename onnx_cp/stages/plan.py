"""The plan stage: every selected layer's rank (or why it keeps its Conv), by its rank rule or by
rank selection, which fits as it chooses (data-aware with --calib: the layers are observed first)."""
from __future__ import annotations

import dataclasses

from onnx_cp import decompositions
from onnx_cp.progress import staged
from onnx_cp.ranks.plan import plan_ranks, rule_decision, rule_decomposition
from onnx_cp.stages.context import Candidate, LayerRecord, Rewrite, fit_key


def plan(rw: Rewrite) -> None:
    """One LayerRecord per selected layer, with its Decision; rank selection's fits are kept."""
    config = rw.config
    selected = [s for s in rw.sites if s.key in rw.chosen]
    if config.selection is None:
        decisions = {s.key: rule_decision(s, config) for s in selected}
    else:
        if rw.calibration is not None:  # every candidate is fitted to the layer's statistics
            rw.calibration.observe(rw.model, selected, staged(rw.progress, "calibration"), rw.notes)
        ranked = plan_ranks(rw.model, rw.sites, rw.chosen, rw.shapes, config, measurement=rw.measurement,
                            data=rw.data, calibration=rw.calibration, fitter=rw.fitter,
                            progress=rw.progress, accuracy=rw.accuracy, deadline=rw.deadline)
        rw.sensitivity = ranked.sensitivity
        rw.int8_input = ranked.int8_input
        rw.notes.extend(ranked.notes)
        rw.selection = ranked.summary
        decisions = ranked.choices
        for s in selected:
            d = decisions[s.key]
            name = d.decomposition or rule_decomposition(s, config)
            if d.fit is not None:
                form = decompositions.get(name).forms[0]
                rw.fits[fit_key(s, Candidate(form, d.rank), rw.calibration is not None)] = d.fit
            if config.decomposition != "auto":  # the decomposition is the one asked for, not a choice
                decisions[s.key] = dataclasses.replace(d, decomposition=None)
    rw.records = [LayerRecord(s, decisions[s.key]) for s in selected]
    capped = [r for r in rw.records if r.decision.capped]
    if capped:
        rw.notes.append(_capped_note(capped))


def _capped_note(capped: list[LayerRecord]) -> str:
    names = ", ".join(r.site.name + ("" if r.decision.cap is None else f" (cap {r.decision.cap})") for r in capped[:4])
    more = f" and {len(capped) - 4} more" if len(capped) > 4 else ""
    rank = capped[0].decision.requested
    return (f"rank {rank} is above the cap of {len(capped)} layer(s), {names}{more}: above its cap the "
            "decomposed form costs more multiply-adds than the Conv, so these keep their Conv and were not fitted; "
            "ask for a lower rank or a fraction such as 0.25")

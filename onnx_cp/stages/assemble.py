"""The assemble stage: splice every fitted layer into a copy of the model, then time the chosen
forms together and give back its Conv to any layer slower there than the original.

A layer's time depends on its neighbours' forms: where a chain leaves onnxruntime's blocked
NCHWc layout, the layout conversion lands on the layer next to it.
"""
from __future__ import annotations

from typing import Sequence


from onnx_cp.sites import Site
from onnx_cp.splice import splice
from onnx_cp.stages.context import Rewrite


def assemble(rw: Rewrite) -> None:
    winners = [r for r in rw.records if r.rewritten]
    rw.final, rw.new_names = splice(rw.model, [r.replacement() for r in winners])
    if rw.config.realize != "auto" or rw.measurement is None or not winners:
        return
    if rw.progress:
        rw.progress("forms: timing the chosen forms together", 0, 1)
    slower = slower_layers(rw, [r.site for r in winners])
    for r in winners:
        if r.site.key in slower:
            among, beside = slower[r.site.key]
            r.extra_timings = {f"{r.form} among the chosen forms": among, "original beside them": beside}
            r.kept_because = "slower than its Conv among the chosen forms"
    if slower:
        rw.final, rw.new_names = splice(rw.model, [r.replacement() for r in rw.rewritten()])


def slower_layers(rw: Rewrite, sites: Sequence[Site]) -> dict[str, tuple[float, float]]:
    """The sites whose rewritten form, timed among the chosen forms, is slower than their Conv:
    key -> (ms among the chosen forms, ms of the original beside them)."""
    before, after = rw.measurement.layers([rw.model, rw.final])
    slower = {}
    for site in sites:
        out = site.node.output[0]
        if out in before and out in after and after[out] > before[out]:
            slower[site.key] = (after[out], before[out])
    return slower




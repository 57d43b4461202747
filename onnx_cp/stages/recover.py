"""The recover stage (--calib): layer-wise recovery of every rewritten layer whose decomposition
supports it, fed by the already-rewritten prefix; each layer's fit then carries its recovered
factors. Recovery off (``recover=False``) still measures the written model's output error."""
from __future__ import annotations

from onnx_cp.progress import staged
from onnx_cp.stages.context import Rewrite


def recover(rw: Rewrite) -> None:
    calib = rw.calibration
    winners = rw.rewritten()
    if calib is None or not winners:
        return
    final, recovered = calib.recover(rw.model, rw.final, [r.replacement() for r in winners],
                                     staged(rw.progress, "recovery"), rw.time_left())
    for r in winners:
        r.recovery = recovered.get(r.site.key)
        if r.recovery is not None and r.recovery.result is not None:
            r.fit = calib.refit(r.fit, r.recovery)
    rw.final = final

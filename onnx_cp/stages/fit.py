"""The fit stage: fit the candidates of every layer that has one (data-aware with --calib: the
layers are observed first, if rank selection did not already), in worker processes, and keep
per layer the fitted candidate of lowest error."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from onnx_cp import decompositions
from onnx_cp.decompositions.calibration import output_error
from onnx_cp.parallel_fit import FitTask, fit_all
from onnx_cp.progress import staged
from onnx_cp.sites import Site
from onnx_cp.stages.context import Candidate, LayerRecord, Rewrite, fit_key


def fit_layers(rw: Rewrite) -> None:
    """Fits for every candidate not fitted yet, then each layer's pick."""
    config, calib = rw.config, rw.calibration
    winners = [r for r in rw.records if r.candidates]
    if calib is not None:
        calib.observe(rw.model, [r.site for r in winners], staged(rw.progress, "calibration"), rw.notes)
    per_site = calib is not None
    tasks = {}
    for r in winners:
        for c in r.candidates:
            key = fit_key(r.site, c, per_site)
            if key not in rw.fits and key not in tasks:
                tasks[key] = _task(key, r, c, rw)
    rw.fits.update(fit_all(list(tasks.values()), config.fit_options(), config.worker_count(),
                           staged(rw.progress, "fitting"), rw.fitter))
    for r in winners:
        fitted = [(c, rw.fits[fit_key(r.site, c, per_site)]) for c in r.candidates]
        best, r.fit = pick(r.site, fitted, r.timings, _stats(r.site, rw))
        r.form, r.decision = best.form, dataclasses.replace(r.decision, rank=best.rank)
        r.kernel_error = error(r.site, best.form, r.fit)


def _task(key, r: LayerRecord, c: Candidate, rw: Rewrite) -> FitTask:
    name = decompositions.for_form(c.form).name
    moments = rw.calibration.moments(r.site) if rw.calibration is not None else None
    label = r.site.name if len(r.candidates) == 1 else f"{r.site.name} ({c.form})"
    return FitTask(key, label, r.site.groups(), c.rank, rw.config.seed, moments, decomposition=name)


def _stats(site: Site, rw: Rewrite):
    """Per group, the input-channel covariance calibration observed (None without --calib)."""
    moments = rw.calibration.moments(site) if rw.calibration is not None else None
    return None if moments is None else [m.channels for m in moments]


def error(site: Site, form: str, fit, stats: Sequence[np.ndarray] | None = None) -> float:
    """The fit's relative kernel error (output error under ``stats``), the same for any decomposition."""
    approx = decompositions.for_form(form).kernels(list(fit.groups))
    return output_error(site.groups(), approx, stats)


def pick(site: Site, fitted: Sequence[tuple[Candidate, object]], timings: dict[str, float],
         stats: Sequence[np.ndarray] | None = None) -> tuple[Candidate, object]:
    """The fitted candidate of lowest error (the faster one on a tie). Forms of one decomposition
    share a fit (cp4 and cp3), so each fit's error is computed once."""
    errors: dict = {}

    def fit_error(cf) -> float:
        key = (decompositions.for_form(cf[0].form).name, id(cf[1]))
        if key not in errors:
            errors[key] = error(site, cf[0].form, cf[1], stats)
        return errors[key]

    return min(fitted, key=lambda cf: (round(fit_error(cf), 9), timings.get(cf[0].form, 0.0)))

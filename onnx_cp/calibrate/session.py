"""What calibration data (``RewriteConfig.calib``, ``--calib``) adds to one rewrite, as the orchestrator calls it:

    calib = Calibration.start(model, config, sites, progress, notes)   # None without calib
    FitTask(..., weights=calib.weights(site))                          # data-aware fits
    final, layers = calib.recover(model, fitted_model, replacements, progress)
    report.calibration = calib.summary()

The calibration inputs are read and checked before any fit; a fifth of them (at least one,
when there are two or more) is held back: the per-layer and whole-model output errors in the
report are measured on those alone.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.calibrate.activations import batched_outputs
from onnx_cp.calibrate.layerwise import LayerRecovery, apply, recover_layers
from onnx_cp.calibrate.observe import Observation, observe
from onnx_cp.calibrate.recovery import RecoveryOptions
from onnx_cp.calibrate.statistics import samples_needed
from onnx_cp.calibrate.weighted_fit import GroupWeights, group_weights
from onnx_cp.discover import ConvSite
from onnx_cp.errors import Message, param
from onnx_cp.progress import Progress
from onnx_cp.ranks.calibration import calib_param, read_calibration
from onnx_cp.ranks.fitting import LayerFit
from onnx_cp.ranks.proxy import output_error
from onnx_cp.splice import Replacement

# Output positions sampled per layer for its statistics and recovery (fewer for wide layers).
PATCHES = 16384
HELD_BACK = 0.2


@dataclass
class Calibration:
    config: object  # RewriteConfig (not imported: config imports nothing of this package)
    x: np.ndarray
    train: int
    observed: dict[str, Observation]
    seconds: float
    model_error_fitted: float | None = None
    model_error: float | None = None
    recovered: dict[str, LayerRecovery] = field(default_factory=dict)

    @classmethod
    def start(cls, model: onnx.ModelProto, config, sites: Sequence[ConvSite], progress: Progress | None,
              notes: list[str]) -> "Calibration | None":
        """Read and check the data, warn when it is too little, observe the layers; None
        without ``config.calib``."""
        if config.calib is None:
            return None
        begin = time.perf_counter()
        x = read_calibration(model, config.calib, config.calib_samples, config.input_shapes)
        held = int(round(len(x) * HELD_BACK)) if len(x) > 1 else 0
        held = max(held, 1) if len(x) > 1 else 0
        train = len(x) - held
        unknown = [s for s in sites if s.out_shape is None or s.in_shape is None]
        if unknown:  # shape inference lost them (a Reshape to a computed shape, say)
            notes.append(Message(f"{param('calib')}: shape inference could not tell the shapes of {len(unknown)} "
                                 f"layer(s) (e.g. {unknown[0].name}); they get plain fits and no recovery"))
            sites = [s for s in sites if s not in unknown]
        notes.extend(_too_few(sites, train, held, config.calib))
        observed = observe(model, sites, x, train, PATCHES, config.seed, config.threads, progress) if sites else {}
        return cls(config, x, train, observed, time.perf_counter() - begin)

    def weights(self, site: ConvSite) -> list[GroupWeights] | None:
        """The data-aware weighting of ``site``'s fit; None for a layer that was not observed."""
        if site.key not in self.observed:
            return None
        return [group_weights(m) for m in self.observed[site.key].moments]

    def recover(self, model: onnx.ModelProto, fitted: onnx.ModelProto, replacements: Sequence[Replacement],
                progress: Progress | None) -> tuple[onnx.ModelProto, dict[str, LayerRecovery]]:
        """The rewritten model after layer-wise recovery (``fitted`` itself when recovery is
        off), and each layer's recovery by site key; the whole model's errors are kept."""
        begin = time.perf_counter()
        config = self.config
        reference = self._outputs(model)
        self.model_error_fitted = self._error(fitted, reference)
        if not config.recover:
            self.model_error = self.model_error_fitted
            return fitted, {}
        options = RecoveryOptions(steps=config.recover_steps, seed=config.seed)
        replacements = [r for r in replacements if r.site.key in self.observed]
        layers = recover_layers(model, replacements, self.observed, self.x, options, config.recover_time,
                                config.threads, progress)
        final = apply(model, layers)
        self.model_error = self._error(final, reference)
        self.recovered = {l.replacement.site.key: l for l in layers}
        self.seconds += time.perf_counter() - begin
        return final, self.recovered

    @staticmethod
    def refit(fit: LayerFit, site: ConvSite, layer: LayerRecovery) -> LayerFit:
        """``fit`` carrying the recovered factors (its kernel errors stay those of the fit)."""
        fits = tuple(dataclasses.replace(f, factors=tuple(g)) for f, g in zip(fit.fits, layer.replacement.factors))
        return dataclasses.replace(fit, fits=fits)

    def summary(self) -> dict:
        recovered = [l for l in self.recovered.values() if l.result is not None]
        return {"data": self.config.calib, "samples": len(self.x), "held_back": len(self.x) - self.train,
                "data_aware_fits": True, "recovered_layers": len(recovered),
                "output_error_fitted": self.model_error_fitted, "output_error": self.model_error,
                "seconds": self.seconds}

    def _outputs(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        """Every output per batch of the held-back samples (not concatenated: an output's batch
        axis need not be its first, as in a (T, N, C) sequence)."""
        x = self.x[self.train:] if self.train < len(self.x) else self.x
        return batched_outputs(model, x, threads=self.config.threads)

    def _error(self, model: onnx.ModelProto, reference) -> float:
        return output_error(self._outputs(model), reference)


def _too_few(sites: Sequence[ConvSite], train: int, held: int, path: str) -> list[str]:
    notes = []
    if held == 0:
        notes.append(Message(f"{calib_param(path)}: a single sample; nothing is held back, so the reported output "
                             "errors are measured on the sample the layers were fitted to"))
    needs = [(samples_needed(s.spec.in_per_group, s.spec.kernel, tuple(s.out_shape[2:])), s) for s in sites]
    short = [(n, s) for n, s in needs if n > train]
    if short:
        n, s = max(short, key=lambda p: p[0])
        notes.append(Message(f"{calib_param(path)}: {train} training samples are too few for the input statistics "
                             f"of {len(short)} layer(s) (the widest, {s.name}, needs {n}); give at least "
                             f"{n + max(held, 1)} samples (with {param('calib_samples')} at least as many)"))
    return notes

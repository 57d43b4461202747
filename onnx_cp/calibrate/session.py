"""What calibration data (``RewriteConfig.calib``, ``--calib``) adds to one rewrite:

    calib = Calibration.start(data, config)              # None without a file of samples
    calib.observe(model, sites, progress, notes)         # once per layer, when its fit needs it
    Factors = decomposition.fit(..., moments=calib.moments(site))
    final, layers = calib.recover(model, fitted_model, replacements, progress)

The data (calibrate.data.CalibrationData) was read, checked and split before any of this; the
per-layer and whole-model output errors are measured on its held-back samples alone.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.calibrate.activations import batched_outputs, output_error
from onnx_cp.calibrate.data import CalibrationData, calib_param
from onnx_cp.calibrate.distill import DIVERGED, DistillOptions, distill_layers, transplant
from onnx_cp.calibrate.layerwise import LayerRecovery, apply, recover_layers, set_biases
from onnx_cp.calibrate.observe import Observation, observe
from onnx_cp.calibrate.recovery import RecoveryOptions
from onnx_cp.calibrate.statistics import samples_needed
from onnx_cp.decompositions import Factors, for_form
from onnx_cp.decompositions.moments import ModeMoments
from onnx_cp.errors import Message, OnnxCpError, param
from onnx_cp.progress import Progress
from onnx_cp.sites import Site
from onnx_cp.splice import Replacement, splice

# Output positions sampled per layer for its statistics and recovery (fewer for wide layers).
PATCHES = 16384
# Adam steps per layer of the short recovery a search scores its candidates after.
QUICK_STEPS = 60


@dataclass(frozen=True)
class CalibrationSummary:
    """The report's ``calibration`` entry: the data and the written model's output errors."""

    data: str
    samples: int
    held_back: int
    recovered_layers: int
    output_error_fitted: float | None  # the written layers as fitted, before recovery
    output_error: float | None  # the written model
    seconds: float
    data_aware_fits: bool = True
    distillation: dict | None = None  # DistillSummary, where it ran

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DistillSummary:
    """The calibration entry's ``distillation``: how the whole-model step went and whether it was kept."""

    epochs: int
    steps: int
    seconds: float
    output_error_before: float | None
    output_error_after: float | None
    kept: bool
    note: str | None = None
    # the distilled model's output error on as many training samples as are held back: well below the
    # held-back error, the layers learned those samples more than the model, and more samples help
    output_error_training: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Calibration:
    data: CalibrationData
    config: object  # RewriteConfig (not imported: config sits above this package)
    observed: dict[str, Observation] = field(default_factory=dict)
    seconds: float = 0.0
    model_error_fitted: float | None = None
    model_error: float | None = None
    recovered: dict[str, LayerRecovery] = field(default_factory=dict)
    distilled: dict[str, np.ndarray] = field(default_factory=dict)  # trained weights, by initializer name
    distillation: DistillSummary | None = None
    _reference: list | None = field(default=None, repr=False)  # the input model's held-back outputs
    _quick: dict = field(default_factory=dict, repr=False)  # quick_recover's layers, by their recovery key

    @property
    def passes(self) -> int:
        """Threads for the passes over the samples and recovery's training (onnxruntime's and
        torch's): every core, as they are computed, not timed (``config.threads`` is the session
        the forms are timed in). On a CNN + LSTM captcha reader the prefix passes and the chains'
        training were most of a --max-drop search's time."""
        return self.config.worker_count()

    @classmethod
    def start(cls, data: CalibrationData, config) -> "Calibration | None":
        """The calibration of a rewrite with a file of samples; None for random proxy inputs."""
        return cls(data, config) if data is not None and data.source is not None else None

    def observe(self, model: onnx.ModelProto, sites: Sequence[Site], progress: Progress | None,
                notes: list[str]) -> None:
        """One pass of the original model over the samples for every site not observed yet,
        with a note for sites it cannot observe and for too few samples."""
        begin = time.perf_counter()
        sites = [s for s in sites if s.observable and s.key not in self.observed]
        unknown = [s for s in sites if s.out_shape is None or s.in_shape is None]
        if unknown:  # shape inference lost them (a Reshape to a computed shape, say)
            notes.append(Message(f"{param('calib')}: shape inference could not tell the shapes of {len(unknown)} "
                                 f"layer(s) (e.g. {unknown[0].name}); they get plain fits and no recovery"))
            sites = [s for s in sites if s not in unknown]
        if not sites:
            return
        data, config = self.data, self.config
        notes.extend(_too_few(sites, data.train, data.samples - data.train, data.source))
        self.observed.update(observe(model, sites, data.fitting, data.train, PATCHES, config.seed, self.passes,
                                     progress))
        self.seconds += time.perf_counter() - begin

    def moments(self, site: Site) -> list[ModeMoments] | None:
        """Per group, the input statistics ``site``'s fit weights its error by (None: not observed)."""
        seen = self.observed.get(site.key)
        return None if seen is None else seen.moments

    def recover(self, model: onnx.ModelProto, fitted: onnx.ModelProto, replacements: Sequence[Replacement],
                progress: Progress | None, max_time: float | None = None
                ) -> tuple[onnx.ModelProto, dict[str, LayerRecovery]]:
        """The rewritten model after layer-wise recovery (``fitted`` itself when recovery is
        off), and each layer's recovery by site key; the whole model's errors are kept. After a
        ``max_drop`` search, recovery is the search's own (no block step; the layers it recovered
        with the same factors and the same layers above are reused)."""
        begin = time.perf_counter()
        config = self.config
        reference = self._reference_outputs(model)
        self.model_error_fitted = self._error(fitted, reference)
        if not config.recover:
            self.model_error = self.model_error_fitted
            return fitted, {}
        # a --max-drop search scored its allocations recovered as ``quick_recover`` recovers at
        # these steps: the written model recovers the same way, and its layers recovered by the
        # search are taken as they were scored (on the captcha reader, the block step on top made
        # the written model lose more than the one scored, and the hold stage gave layers back)
        searched = config.searches_drop
        options = self._searched(config.recover_steps) if searched else RecoveryOptions(steps=config.recover_steps,
                                                                                         seed=config.seed)
        trained, fixed = self._trainable(replacements)
        budget = _least(config.recover_time, max_time)
        layers = recover_layers(model, trained, self.observed, self.data.fitting, options, budget,
                                self.passes, progress, fixed, memo=self._quick if searched else None)
        final = apply(model, layers, fixed)
        self.model_error = self._error(final, reference)
        self.recovered = {l.replacement.site.key: l for l in layers}
        self.seconds += time.perf_counter() - begin
        return final, self.recovered

    def distill(self, model: onnx.ModelProto, written: onnx.ModelProto, nodes: Sequence[str],
                progress: Progress | None, max_time: float | None = None) -> onnx.ModelProto:
        """``written`` after whole-model distillation of ``nodes``' weights on the training samples,
        when that lowers the output error on the held-back ones; else ``written`` itself. Why it did
        not run or was not kept is in ``distillation.note``."""
        config = self.config
        begin = time.perf_counter()
        before = self.model_error
        options = DistillOptions(epochs=config.distillation_epochs, seed=config.seed,
                                 max_time=_least(config.distill_time, max_time))
        try:
            result = distill_layers(model, written, nodes, self.data.x[:self.data.train or self.data.samples],
                                    options, progress)
        except OnnxCpError as exc:
            self.distillation = DistillSummary(0, 0, time.perf_counter() - begin, before, None, False,
                                               f"not run: {exc}")
            self.seconds += self.distillation.seconds
            return written
        tuned = transplant(written, result.weights)
        after = self._error(tuned, self._reference_outputs(model))
        kept = before is None or after < before
        training = self._training_error(model, tuned)
        note = None if kept else "not kept: the output error on held-back inputs rose"
        if result.diverged_loss is not None:
            stop = (f"training stopped after epoch {result.epochs}, whose mean loss {result.diverged_loss:.3g} rose "
                    f"past {DIVERGED:g}x the first batch's ({result.first_loss:.3g})")
            note = f"{note}; {stop}" if note else stop
        self.distillation = DistillSummary(result.epochs, result.steps, time.perf_counter() - begin, before, after,
                                           kept, note, training)
        self.seconds += self.distillation.seconds
        if not kept:
            return written
        self.distilled, self.model_error = result.weights, after
        return tuned

    def quick_recover(self, model: onnx.ModelProto, fitted: onnx.ModelProto, replacements: Sequence[Replacement],
                      steps: int = QUICK_STEPS, max_time: float | None = None) -> onnx.ModelProto:
        """``fitted`` after a short recovery (``steps`` Adam steps per layer, no block step), as a
        search compares candidates by; the rewrite's own recovery is left untouched. A layer
        recovered by an earlier call with the same factors and the same layers rewritten above
        it is reused, not trained again."""
        trained, fixed = self._trainable(replacements)
        if not self.config.recover or not trained:
            return fitted
        layers = recover_layers(model, trained, self.observed, self.data.fitting, self._searched(steps), max_time,
                                self.passes, None, fixed, memo=self._quick)
        return apply(model, layers, fixed)

    def _searched(self, steps: int) -> RecoveryOptions:
        """The recovery a search scores by (``quick_recover``) and a ``max_drop`` rewrite writes:
        one definition, so that the written layers' keys meet the search's in ``_quick``."""
        return RecoveryOptions(steps=steps, seed=self.config.seed, block=0)

    def _trainable(self, replacements: Sequence[Replacement]) -> tuple[list[Replacement], list[Replacement]]:
        """(the layers recovery trains: observed, of a decomposition it can train; the rest)."""
        ok = [r.site.key in self.observed and for_form(r.form).recoverable for r in replacements]
        return [r for r, t in zip(replacements, ok) if t], [r for r, t in zip(replacements, ok) if not t]

    def written(self, model: onnx.ModelProto, replacements: Sequence[Replacement]
                ) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
        """``model`` with ``replacements`` spliced in, each recovered layer with its recovered
        factors and bias (a subset of the layers recovery ran on, when some were given back)."""
        model, names = splice(model, list(replacements))
        set_biases(model, {r.site.key: self.recovered[r.site.key].bias for r in replacements
                           if r.site.key in self.recovered and self.recovered[r.site.key].result is not None})
        return transplant(model, self.distilled) if self.distilled else model, names

    def measure(self, model: onnx.ModelProto, written: onnx.ModelProto) -> None:
        """The written model's output error, where no recovery ran (or it was given back)."""
        self.recovered, self.distilled, self.distillation = {}, {}, None
        self.model_error_fitted = self.model_error = self._error(written, self._reference_outputs(model))

    @staticmethod
    def refit(fit: Factors, layer: LayerRecovery) -> Factors:
        """``fit`` carrying the recovered factors (its kernel errors stay those of the fit)."""
        return dataclasses.replace(fit, groups=tuple(tuple(g) for g in layer.replacement.factors))

    def summary(self) -> CalibrationSummary:
        recovered = [l for l in self.recovered.values() if l.result is not None]
        return CalibrationSummary(self.data.source, self.data.samples, self.data.samples - self.data.train,
                                  len(recovered), self.model_error_fitted, self.model_error, self.seconds,
                                  distillation=self.distillation.to_dict() if self.distillation else None)

    def _outputs(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        """Every output per batch of the held-back samples (not concatenated: an output's batch
        axis need not be its first, as in a (T, N, C) sequence)."""
        data = self.data
        x = data.held_back if data.train < data.samples else data.fitting
        return batched_outputs(model, x, threads=self.passes)

    def _reference_outputs(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        """``_outputs`` of the input model, computed once per rewrite (it never changes)."""
        if self._reference is None:
            self._reference = self._outputs(model)
        return self._reference

    def _training_error(self, model: onnx.ModelProto, tuned: onnx.ModelProto) -> float | None:
        """``tuned``'s output error on the first training samples, as many as are held back."""
        data = self.data
        count = min(data.samples - data.train, data.train)
        if count == 0:
            return None
        x, threads = data.x[:count], self.passes
        return output_error(batched_outputs(tuned, x, threads=threads), batched_outputs(model, x, threads=threads))

    def _error(self, model: onnx.ModelProto, reference) -> float:
        return output_error(self._outputs(model), reference)


def _least(*limits: float | None) -> float | None:
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def _too_few(sites: Sequence[Site], train: int, held: int, path: str) -> list[str]:
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

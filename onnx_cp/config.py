"""The one configuration object shared by the CLI and the Python API."""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Mapping

from onnx_cp import decompositions
from onnx_cp.conv import align_rank
from onnx_cp.decompositions.cp_solver import METHODS, FitOptions
from onnx_cp.errors import OnnxCpError, param, spelled
from onnx_cp.runtime import OPT_LEVELS
from onnx_cp.ranks.options import RankSelection


QUANTIZE = ("int8",)  # what quantize= may ask for
DISTILL_EPOCHS = 10  # distill_epochs' default, but with max_drop


@dataclass(frozen=True)
class RankRule:
    """``value`` applies to layers matching ``pattern`` (None: every layer).

    An int is the rank per group; a float in (0, 1) is the share of the layer's multiply-adds
    that the decomposed form may cost; a string is a rank in a decomposition's own syntax
    ("16x12" for tucker2, "4:16x8x3x1" for gkpd, "24:8" for lrcp), checked by its parse_rank.
    """

    pattern: str | None
    value: int | float | str

    def matches(self, names: tuple[str, ...]) -> bool:
        return self.pattern is None or any(fnmatch.fnmatchcase(n, self.pattern) for n in names if n)


def parse_rank(text: str | int | float, decomposition: str = decompositions.DEFAULT) -> RankRule:
    """``'200'``, ``'0.25'``, ``'conv2=200'`` or ``'layer3.*=0.5'`` -> RankRule; for a
    ``decomposition`` other than cp also its own rank syntax (``'conv2=16x12'`` for tucker2)."""
    if isinstance(text, bool):
        raise OnnxCpError(f"{rank_param(text)} is not a number", usage=True)
    if isinstance(text, (int, float)):
        pattern, raw = None, str(text)
    else:
        pattern, sep, raw = str(text).rpartition("=")
        pattern = pattern.strip() if sep else None
        if sep and not pattern:
            raise OnnxCpError(f"{rank_param(text)} has an empty layer pattern; write it like 'conv2=200'",
                              usage=True)
    raw = raw.strip()
    try:
        value: int | float = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            counted = decomposition == "auto" or (decomposition in decompositions.NAMES
                                                 and decompositions.get(decomposition).count_ranked)
            if not counted:
                return RankRule(pattern, _own_rank(text, raw, decomposition))
            raise OnnxCpError(f"{rank_param(text)}: {raw!r} is not a number; give an integer rank such "
                              "as 64, or a fraction of the layer's cost such as 0.25", usage=True) from None
        if not 0.0 < value < 1.0:
            raise OnnxCpError(f"{rank_param(text)}: a fractional rank must lie in (0, 1), got {value}",
                              usage=True)
    else:
        if value < 1:
            raise OnnxCpError(f"{rank_param(text)}: the rank must be at least 1, got {value}", usage=True)
    if decomposition == "gkpd" and isinstance(value, float):
        raise OnnxCpError(f"{rank_param(text)}: gkpd takes a number of terms (4) or terms and A's shape "
                          "('4:16x8x3x1'), not a fraction of the cost", usage=True)
    return RankRule(pattern, value)


def rank_param(text) -> str:
    """Rank rule ``text`` in a message: ``ranks entry 'conv2=8'`` for the API, ``--rank 'conv2=8'`` for the CLI."""
    return spelled(f"ranks entry {text!r}", f"--rank {text!r}")


def _own_rank(text, raw: str, decomposition: str) -> str:
    """``raw`` when ``decomposition`` reads it as a rank, else a one-line error with its syntax."""
    if decomposition not in decompositions.NAMES:
        return raw  # an unknown decomposition is refused by RewriteConfig, with the names
    try:
        decompositions.get(decomposition).parse_rank(raw)
    except OnnxCpError:
        raise OnnxCpError(f"{rank_param(text)}: {raw!r} is not a {decomposition} rank; give "
                          f"{decompositions.RANK_SYNTAX[decomposition]}", usage=True) from None
    return raw


@dataclass(frozen=True)
class RewriteConfig:
    """What to rewrite and how. Validated on construction, so bad values fail before any work.

    ranks: rank rules. A rule with a pattern beats a rule without one, whatever their order;
        between two rules with patterns that match a layer, the later wins (as between two
        without). Strings are parsed by ``parse_rank``.
    layers / exclude: glob patterns matched against the Conv node's name and its weight's name.
    cap_rank: a layer whose rank would make its decomposed form cost no fewer multiply-adds than
        the original keeps its Conv (and is not fitted); False keeps such ranks.
    align_ranks: round ranks that onnx-cp computes (fractions, caps) down to a multiple of 16
        (8 below 16), which onnxruntime's NCHWc layout needs; integer ranks are used as given.
    realize: a form of the decomposition (cp4, cp3, tucker2, ...), or auto (time each form and the
        original alone in onnxruntime, keep the fastest; the original stays when no form beats it).
    threads / opt_level: the onnxruntime session that ``auto`` times layers in.
    selection: choose ranks automatically (a RankSelection: max_error, target_speedup or
        budget_macs); rank rules with a pattern then fix the ranks of the layers they match.
    fit_tol: a layer's fit stops once its last 10 iterations lowered the relative kernel error
        by less than this fraction (on top of max_iter and max_time).
    max_time: seconds per layer for the fit and its degeneracy correction together.
    jobs: worker processes that fit layers in parallel (None: one per available core); the
        same seed gives the same factors whatever the number.
    decomposition: cp (today's rewrite), tucker2, svd, gkpd, lrcp, or auto (per layer, the
        candidate with the lowest error among those faster than the Conv at the layer's share
        of the budget; docs/decompositions.md). ``method`` stays the CP solver.
    factor_rank: lrcp's factor rank L (with auto: lrcp joins the candidates).
    measure: time the rewritten model against the input in onnxruntime before returning it
        (needs static input shapes); with realize="auto" a slower result gives the layers
        their Convs back.
    quantize: "int8" to quantize the rewritten model too (onnxruntime's static QDQ, per-channel
        weights, calibrated on ``calib``), each Conv, Gemm and MatMul in int8 only where that
        measured faster; rank selection then counts the quantized model's speed. Without rank
        rules or a selection it is INT8 alone, to compare through one tool.
    data: the samples ``selection.max_drop``'s metric is measured on: an .npz (``x`` and any arrays
        the metric reads, ``y`` for labels), an .npy, a folder of images (in class subfolders for
        labels), or a dict of arrays. Without ``calib`` its chosen part also calibrates the fits.
    distill_epochs / distill_time: with ``calib``, after layer-wise recovery the rewritten layers'
        weights train together for this many epochs (and at most these seconds) so that the model's
        outputs match the input's on the calibration samples (torch and onnx2torch, the finetune
        extra); the result is kept only where the output error on held-back samples drops. 0 epochs: off.
        None (the default): 10, or 0 with ``selection.max_drop``, whose search scores every model
        recovered and not distilled, so that the model written is the one it measured (on a CNN +
        LSTM captcha reader, distillation took 60 to 110 s of a 11 to 12 minute search and lowered
        the output error by 0 to 2.5%).
    time_budget: seconds for the whole ``max_drop`` search: when they run out, the fastest model
        found within the drop is written, or none is found and the rewrite fails naming the best
        (or, where no model was scored yet, the step the search had reached).
    """

    ranks: tuple[RankRule | str | int | float, ...] = ()
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    method: str = "nls"
    max_iter: int = 500
    tol: float = 1e-9
    max_time: float | None = None
    stabilize: str = "auto"
    degeneracy_threshold: float = 10.0
    seed: int = 0
    cap_rank: bool = True
    align_ranks: bool = True
    realize: str = "auto"
    threads: int = 1
    opt_level: str = "all"
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    selection: RankSelection | None = None
    fit_tol: float = 1e-3
    jobs: int | None = None
    measure: bool = True
    calib: str | None = None
    calib_samples: int = 512
    recover: bool = True
    recover_steps: int = 300
    recover_time: float | None = 300.0
    distill_epochs: int | None = None
    distill_time: float | None = 300.0
    decomposition: str = decompositions.DEFAULT
    factor_rank: int | None = None
    quantize: str | None = None
    data: object = None  # a path (.npz, .npy, folder of images) or a dict of arrays, for selection.max_drop
    time_budget: float | None = None

    def __post_init__(self):
        self._check_decomposition()
        ranks = self.ranks
        if isinstance(ranks, (str, int, float, RankRule)):
            ranks = (ranks,)
        rules = tuple(r if isinstance(r, RankRule) else parse_rank(r, self.decomposition) for r in ranks)
        if self.selection is not None:
            plain = [r for r in rules if r.pattern is None]
            if plain:
                rank = plain[0].value
                raise OnnxCpError(f"{param('ranks', repr(rank), cli=str(rank))} sets every layer's rank, and "
                                  f"{self.selection.describe()} chooses them; give one of the two "
                                  "(per-layer rules such as 'conv1=16' may stay)", usage=True)
        elif not rules and self.quantize is None:
            raise OnnxCpError(f"no rank given; pass {param('ranks')} (e.g. {param('ranks', '(64,)', cli='64')} or "
                              f"{param('ranks', '(0.25,)', cli='0.25')}), {param('selection.max_error')}, "
                              f"{param('selection.target_speedup')} or {param('selection.budget_macs')}", usage=True)
        if self.selection is None and not any(r.pattern is None for r in rules) and not self.layers:
            # Per-layer ranks alone select the layers they name.
            object.__setattr__(self, "layers", tuple(r.pattern for r in rules))
        object.__setattr__(self, "ranks", rules)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.method not in METHODS:
            raise OnnxCpError(f"{param('method', repr(self.method))} is unknown; choose one of {', '.join(METHODS)}",
                              usage=True)
        self._check_realize(rules)
        if self.threads < 1:
            raise OnnxCpError(f"{param('threads')} must be at least 1, got {self.threads}", usage=True)
        if self.opt_level not in OPT_LEVELS:
            raise OnnxCpError(f"{param('opt_level', repr(self.opt_level))}: choose one of {', '.join(OPT_LEVELS)}",
                              usage=True)
        if self.stabilize not in ("auto", "always", "never"):
            raise OnnxCpError(f"{param('stabilize', repr(self.stabilize))}: choose auto, always or never", usage=True)
        if self.max_iter < 1:
            raise OnnxCpError(f"{param('max_iter')} must be at least 1, got {self.max_iter}", usage=True)
        if not 0 <= self.fit_tol < 1:
            raise OnnxCpError(f"{param('fit_tol')} must lie in [0, 1), got {self.fit_tol}", usage=True)
        if self.jobs is not None and (isinstance(self.jobs, bool) or self.jobs < 1):
            raise OnnxCpError(f"{param('jobs')} must be at least 1, got {self.jobs}", usage=True)
        if self.max_time is not None and not self.max_time > 0:
            raise OnnxCpError(f"{param('max_time')} must be positive, got {self.max_time}", usage=True)
        if self.calib_samples < 1:
            raise OnnxCpError(f"{param('calib_samples')} must be at least 1, got {self.calib_samples}", usage=True)
        if self.recover_steps < 0:
            raise OnnxCpError(f"{param('recover_steps')} must be 0 or more, got {self.recover_steps}", usage=True)
        if self.distill_epochs is not None and (not isinstance(self.distill_epochs, int) or self.distill_epochs < 0):
            raise OnnxCpError(f"{param('distill_epochs')} must be 0 or more, got {self.distill_epochs}", usage=True)
        if self.distill_time is not None and not self.distill_time > 0:
            raise OnnxCpError(f"{param('distill_time')} must be positive, got {self.distill_time}", usage=True)
        if self.recover_time is not None and not self.recover_time > 0:
            raise OnnxCpError(f"{param('recover_time')} must be positive, got {self.recover_time}", usage=True)
        if self.selection is not None and self.selection.calib is not None:
            # RankSelection.calib is an alias kept for older callers: the data is the config's.
            if self.calib is not None and self.calib != self.selection.calib:
                raise OnnxCpError(f"{param('calib')} and {param('selection.calib')} name different data "
                                  f"({self.calib!r}, {self.selection.calib!r}); give {param('calib')} alone",
                                  usage=True)
            object.__setattr__(self, "calib", self.selection.calib)
        self._check_quantize()
        self._check_drop()
        if self.selection is not None and self.selection.seed and not self.seed:
            object.__setattr__(self, "seed", self.selection.seed)  # RankSelection.seed's alias, likewise

    def _check_drop(self) -> None:
        drop = self.searches_drop
        if drop and self.data is None:
            raise OnnxCpError(f"{self.selection.describe()} is measured on your data: give it with "
                              f"{param('data', repr('val.npz'), cli='val.npz')} (x, with y for labels)", usage=True)
        for name in ("data", "time_budget"):
            if getattr(self, name) is not None and not drop:
                raise OnnxCpError(f"{param(name)} serves {param('selection.max_drop')}; give that too, or leave "
                                  f"{param(name)} out", usage=True)
        if self.time_budget is not None and not self.time_budget > 0:
            raise OnnxCpError(f"{param('time_budget')} must be a positive number of seconds, got {self.time_budget}",
                              usage=True)

    def _check_quantize(self) -> None:
        if self.quantize is None:
            return
        if self.quantize not in QUANTIZE:
            raise OnnxCpError(f"{param('quantize', repr(self.quantize))}: choose {', '.join(QUANTIZE)}", usage=True)
        if self.calib is None:
            raise OnnxCpError(f"{param('quantize', repr(self.quantize), cli=self.quantize)} is static quantization, "
                              f"calibrated on real inputs: give them with {param('calib', repr('data.npy'), cli='data.npy')} "
                              "(an .npz with x, an .npy, or a folder of images)", usage=True)

    def _check_decomposition(self) -> None:
        if self.decomposition not in (*decompositions.NAMES, "auto"):
            raise OnnxCpError(f"{param('decomposition', repr(self.decomposition))}: choose one of "
                              f"{', '.join(decompositions.NAMES)}, auto", usage=True)
        if self.factor_rank is None:
            return
        if isinstance(self.factor_rank, bool) or not isinstance(self.factor_rank, int) or self.factor_rank < 1:
            raise OnnxCpError(f"{param('factor_rank')} must be a positive integer, got {self.factor_rank!r}",
                              usage=True)
        if self.decomposition not in ("lrcp", "auto"):
            raise OnnxCpError(f"{param('factor_rank')} is lrcp's factor rank; give it with "
                              f"{param('decomposition', repr('lrcp'), cli='lrcp')} "
                              f"(or auto), not {self.decomposition}", usage=True)

    def _check_realize(self, rules: tuple[RankRule, ...]) -> None:
        """``realize`` names a form of the decomposition (or one of its aliases: cp4/cp3 pick
        lrcp's), or auto; lrcp needs its factor rank; rank selection plans the ranks of the
        decompositions that are selectable (or auto's budgets)."""
        d = self.decomposition
        own = decompositions.get(d) if d != "auto" else None
        allowed = (*own.forms, *own.aliases, "auto") if own is not None else ("auto",)
        if self.realize not in allowed:
            raise OnnxCpError(f"{param('realize', repr(self.realize))} is not a form of "
                              f"{param('decomposition', repr(d), cli=d)}; choose one of "
                              f"{', '.join(allowed)}", usage=True)
        if d == "lrcp" and self.factor_rank is None and not all(isinstance(r.value, str) for r in rules):
            raise OnnxCpError(f"{param('decomposition', repr('lrcp'), cli='lrcp')} needs its factor rank: give "
                              f"{param('factor_rank', 'L', cli='L')} (e.g. "
                              f"{spelled('ranks=(24,), factor_rank=8', '--rank 24 --factor-rank 8')}) or write each "
                              "rank as R:L", usage=True)
        if self.selection is not None and own is not None and not own.selectable:
            choices = [n for n in decompositions.NAMES if decompositions.get(n).selectable] + ["auto"]
            api = "decomposition=" + " or ".join(repr(c) for c in choices)
            shown = " and ".join(decompositions.get(n).display for n in choices[:-1])
            raise OnnxCpError(f"{self.selection.describe()} chooses {shown} ranks; with "
                              f"{param('decomposition', repr(d), cli=d)} give {param('ranks')}, or choose "
                              f"{spelled(api, '--decomposition ' + ' or '.join(choices))}", usage=True)

    def rank_rule(self, names: tuple[str, ...]) -> RankRule | None:
        """The rule for a layer: the last matching rule with a pattern, else the last without one."""
        patterned = [r for r in self.ranks if r.pattern is not None and r.matches(names)]
        if patterned:
            return patterned[-1]
        plain = [r for r in self.ranks if r.pattern is None]
        return plain[-1] if plain else None

    def align_rank(self, rank: int) -> int:
        """A rank onnx-cp computed, rounded to onnxruntime's NCHWc blocks unless ``align_ranks`` is off."""
        return align_rank(rank) if self.align_ranks else rank

    def fit_options(self) -> FitOptions:
        return FitOptions(method=self.method, max_iter=self.max_iter, tol=self.tol,
                          max_time=self.max_time, stabilize=self.stabilize,
                          degeneracy_threshold=self.degeneracy_threshold, progress_tol=self.fit_tol)

    @property
    def searches_drop(self) -> bool:
        """Whether ranks are chosen by ``selection.max_drop``'s search on the user's metric."""
        return self.selection is not None and self.selection.max_drop is not None

    @property
    def distillation_epochs(self) -> int:
        """``distill_epochs``, its default resolved (10, or 0 with ``selection.max_drop``)."""
        if self.distill_epochs is not None:
            return self.distill_epochs
        return 0 if self.searches_drop else DISTILL_EPOCHS

    def worker_count(self) -> int:
        """Fitting processes: ``jobs``, or one per core this process may run on."""
        if self.jobs is not None:
            return self.jobs
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


def defaults() -> dict[str, object]:
    """Every option's default as the dataclasses hold it (``selection.*`` for RankSelection's): the
    one table the CLI takes its defaults from, so the two doors cannot drift apart."""
    table = {f.name: f.default for f in dataclasses.fields(RewriteConfig) if f.default is not dataclasses.MISSING}
    table.update({f"selection.{f.name}": f.default for f in dataclasses.fields(RankSelection)
                  if f.default is not dataclasses.MISSING})
    return table


# RankSelection's fields that the keyword form of the API takes directly (its aliases of the
# config's own ``calib`` and ``seed`` stay out: they are the config's)
_SELECTION_OPTIONS = ("max_error", "target_speedup", "budget_macs", "max_drop", "drop", "metric", "holdout",
                      "calib_count", "search", "storage", "study_name", "cost", "candidates", "measure", "rounds")


def config_from(**options) -> RewriteConfig:
    """A RewriteConfig from keywords, rank selection's among them:
    ``config_from(max_drop=0.01, data="val.npz", metric="top1")``."""
    chosen = {k: options.pop(k) for k in list(options) if k in _SELECTION_OPTIONS}
    known = {f.name for f in dataclasses.fields(RewriteConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise OnnxCpError(f"unknown option(s) {', '.join(unknown)}; the options are RewriteConfig's fields and "
                          f"rank selection's ({', '.join(_SELECTION_OPTIONS)})", usage=True)
    if any(chosen.get(mode) is not None for mode in _SELECTION_OPTIONS[:4]):
        options["selection"] = RankSelection(**chosen)
    elif chosen:
        raise OnnxCpError(f"{', '.join(param(k) for k in chosen)} serve rank selection: give one of "
                          f"{', '.join(param(m) for m in _SELECTION_OPTIONS[:4])} too", usage=True)
    return RewriteConfig(**options)

"""Rewrite chosen layers of a model as low-rank decompositions (the Python API behind ``rewrite``).

A list of named stages, each a module of ``onnx_cp.stages``, each run once; every selected layer
is one record from its plan to its report row, and the report is assembled at the end.
"""
from __future__ import annotations

import os

import onnx

from onnx_cp.config import RewriteConfig, config_from
from onnx_cp.errors import OnnxCpError
from onnx_cp.decompositions.cp_solver import Fitter
from onnx_cp.measure import LayerTimer, Timer
from onnx_cp.progress import Progress
from onnx_cp.report import RewriteResult
from onnx_cp.stages.assemble import assemble
from onnx_cp.stages.discover import start
from onnx_cp.stages.distill import distill
from onnx_cp.stages.fit import fit_layers
from onnx_cp.stages.forms import choose_forms
from onnx_cp.stages.hold import hold
from onnx_cp.stages.plan import plan
from onnx_cp.stages.quantize import quantize
from onnx_cp.stages.recover import recover
from onnx_cp.stages.report import finish
from onnx_cp.stages.verify import verify

__all__ = ["RewriteResult", "rewrite", "rewrite_with_report"]


def rewrite(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig | None = None,
            **options) -> onnx.ModelProto:
    """Return a copy of ``model`` with the layers chosen by ``config`` rewritten; or, instead of a
    config, its options as keywords: ``rewrite("m.onnx", max_drop=0.01, data="val.npz")``."""
    return rewrite_with_report(model, config, **options).model


def rewrite_with_report(model: onnx.ModelProto | str | os.PathLike, config: RewriteConfig | None = None, *,
                        progress: Progress | None = None, fitter: Fitter | None = None,
                        timer: Timer | LayerTimer | None = None, **options) -> RewriteResult:
    """Like ``rewrite``, and also say what happened to every layer.

    ``fitter`` replaces the CP solver and ``timer`` onnxruntime's timing (an object with
    ``layers(models)`` and ``whole(models)``, or a per-layer timer alone): tests inject them to
    check one part alone.
    """
    if config is not None and options:
        raise OnnxCpError(f"give a RewriteConfig or its options as keywords, not both (got {', '.join(options)})",
                          usage=True)
    config = config if config is not None else config_from(**options)
    rw = start(model, config, progress=progress, fitter=fitter, timer=timer)
    plan(rw)  # ranks: rules or rank selection
    choose_forms(rw)  # candidate forms, timed with placeholder factors
    fit_layers(rw)  # fits of the candidates that beat their Conv
    assemble(rw)  # spliced, the chosen mix timed together
    recover(rw)  # --calib: layer-wise recovery
    distill(rw)  # --calib: the rewritten layers trained together on the whole model's outputs
    quantize(rw)  # --quantize int8: each node in int8 where that is faster
    hold(rw)  # --max-drop: layers given back while the drop is exceeded; the held-back drop
    verify(rw)  # the written model against the input
    return finish(rw)  # report rows, provenance, checker

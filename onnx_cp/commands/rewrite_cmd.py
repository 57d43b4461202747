"""``onnx-cp rewrite``: replace layers with low-rank decompositions and write the faster model.

Every option's default comes from the configuration's own table (``config.defaults``), and an
option the chosen mode does not use is refused in one line (``MODE_OPTIONS``).
"""
from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from onnx_cp.commands.options import ProjectCommand, for_cli, input_shape_option, make_console, parse_input_shapes
from onnx_cp.commands.progress_view import progress_view
from onnx_cp.config import DISTILL_EPOCHS, RewriteConfig, defaults
from onnx_cp.accuracy import drop_from_percent
from onnx_cp.errors import OnnxCpError
from onnx_cp.decompositions.cp_solver import METHODS
from onnx_cp.decompositions import FORMS, NAMES
from onnx_cp.ranks.options import RankSelection
from onnx_cp.model_io import check_output_path, save_model, save_text
from onnx_cp.report import render_rewrite
from onnx_cp.rewrite import rewrite_with_report

DEFAULTS = defaults()
BUDGETS = ("--target-speedup", "--budget-macs")
CALIBRATED = ("--calib", "--max-drop")  # --max-drop calibrates on --data's choosing part
# Options that only some modes use -> the flags that turn those modes on.
MODE_OPTIONS = {
    "calib_count": BUDGETS + ("--max-drop",), "search": BUDGETS, "search_storage": BUDGETS, "study_name": BUDGETS,
    "cost": ("--target-speedup",),
    "calib_samples": CALIBRATED, "no_recover": CALIBRATED, "recover_steps": CALIBRATED, "recover_time": CALIBRATED,
    "distill_epochs": CALIBRATED, "distill_time": CALIBRATED,
    "data": ("--max-drop",), "metric": ("--max-drop",), "drop_kind": ("--max-drop",), "holdout": ("--max-drop",),
    "time_budget": ("--max-drop",),
}


@click.command("rewrite", cls=ProjectCommand)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Where to write the rewritten model.")
@click.option("--rank", "ranks", multiple=True, metavar="R|FRACTION|GLOB=R",
              help="Rank per layer (per group): 64; 0.25 = a quarter of the layer's multiply-adds; "
                   "tucker2 16x12, gkpd 4:16x8x3x1, lrcp 24:8; "
                   "'conv2*=200' for matching layers only. Repeatable: a rule with a pattern beats one "
                   "without, whatever the order; between two patterns the later wins.")
@click.option("--max-error", type=float, default=None, metavar="E",
              help="Choose per layer the smallest rank whose relative kernel error is at most E.")
@click.option("--target-speedup", type=float, default=None, metavar="S",
              help="Choose ranks so the whole model gets S times faster, hurting its outputs least.")
@click.option("--budget-macs", type=float, default=None, metavar="N",
              help="Choose ranks so the whole model costs at most N multiply-adds (e.g. 5e9).")
@click.option("--calib", type=click.Path(path_type=str), default=None,
              help="Unlabeled calibration inputs: .npz (array x), .npy, or a folder of images. Turns on data-aware "
                   "fits and layer-wise recovery, and feeds the rank proxy.")
@click.option("--max-drop", type=float, default=None, metavar="D",
              help="Choose the fastest model whose metric on --data drops by at most D: percentage points of a "
                   "metric in [0, 1] (--drop absolute), or percent of the original's score (--drop relative).")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="With --max-drop: the samples the metric is measured on: .npz (x, with y for labels, and any "
                   "arrays your metric reads), .npy, or a folder of images (class subfolders for labels).")
@click.option("--metric", default=None, metavar="top1|top5|agreement|MODULE:FUNCTION",
              help="With --max-drop: what the drop is measured in [default: top1 with labels, agreement without]; "
                   "MODULE:FUNCTION is your f(model_path, data) -> float, higher is better.")
@click.option("--drop", "drop_kind", type=click.Choice(["absolute", "relative"]),
              default=DEFAULTS["selection.drop"], show_default=True,
              help="With --max-drop: points of the metric, or percent of the original's score.")
@click.option("--holdout", type=float, default=DEFAULTS["selection.holdout"], show_default=True, metavar="F",
              help="With --max-drop: the share of --data held back; the drop reported is measured there.")
@click.option("--time-budget", type=float, default=None, metavar="S",
              help="With --max-drop: seconds for the whole search; the fastest model found within the drop is "
                   "written when they run out, and a search that has scored no model by then fails in one line "
                   "naming the step it reached (--max-time stays the seconds of one layer's fit).")
@click.option("--quantize", type=click.Choice(["int8"]), default=DEFAULTS["quantize"],
              help="Also quantize the rewritten model: onnxruntime's static INT8 (QDQ, per-channel weights) "
                   "calibrated on --calib, each Conv/Gemm/MatMul in int8 only where that measured faster; "
                   "--target-speedup then counts the quantized model. Without --rank or a target: INT8 alone.")
@click.option("--calib-count", default=DEFAULTS["selection.calib_count"], show_default=True, help="Calibration inputs the rank proxy uses at most.")
@click.option("--calib-samples", default=DEFAULTS["calib_samples"], show_default=True, metavar="N",
              help="Calibration inputs the fits and recovery use at most; a fifth is held back for the report.")
@click.option("--no-recover", is_flag=True,
              help="With --calib: keep the data-aware fits as they are, without layer-wise recovery.")
@click.option("--recover-steps", default=DEFAULTS["recover_steps"], show_default=True, metavar="N",
              help="Adam steps per layer in recovery (torch; without it, least squares alone).")
@click.option("--recover-time", type=float, default=DEFAULTS["recover_time"], show_default=True, metavar="S",
              help="Seconds of recovery training for all layers together.")
@click.option("--distill-epochs", type=int, default=DEFAULTS["distill_epochs"], metavar="N",
              help="After recovery, epochs that train the rewritten layers together so the model's outputs match "
                   "the input's on --calib (needs the finetune extra; kept only where held-back error drops; 0: off). "
                   f"[default: {DISTILL_EPOCHS}; 0 with --max-drop, whose search measures each model undistilled]")
@click.option("--distill-time", type=float, default=DEFAULTS["distill_time"], show_default=True, metavar="S",
              help="Seconds of that distillation, at most.")
@click.option("--search", default=DEFAULTS["selection.search"], show_default=True, metavar="N",
              help="Refine the allocation with N Bayesian-optimization trials (optuna) on the proxy.")
@click.option("--search-storage", default=None, metavar="URL",
              help="Keep the --search trials in this optuna database (sqlite:///study.db, postgresql://...): "
                   "processes on one study share trials, and a later run resumes it.")
@click.option("--study-name", default=None, metavar="NAME",
              help="The study in --search-storage [default: named after the layers and candidate ranks].")
@click.option("--cost", type=click.Choice(["macs", "latency"]), default=DEFAULTS["selection.cost"], show_default=True,
              help="What --target-speedup counts: multiply-adds, or per-layer times measured in onnxruntime.")
@click.option("--layers", multiple=True, metavar="GLOB",
              help="Rewrite only Convs whose node or weight name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave matching Convs alone (repeatable).")
@click.option("--decomposition", type=click.Choice([*NAMES, "auto"]), default=DEFAULTS["decomposition"],
              show_default=True,
              help="How each layer is factored: cp; tucker2 (--rank R or R1xR2); svd (also 1x1 Convs, and Gemm/MatMul "
                   "with a constant weight); gkpd (--rank TERMS or TERMS:F1xC1xh1xw1); lrcp (CP with low-rank factors, "
                   "--factor-rank L); auto: per layer the lowest-error candidate faster than the Conv at the CP form's cost "
                   "(with --max-error: the candidate of fewest multiply-adds within the bound; with "
                   "--target-speedup or --budget-macs: the budget's choice among CP, Tucker-2 and SVD).")
@click.option("--factor-rank", type=int, default=None, metavar="L",
              help="lrcp's factor rank: the channel factors have rank L (with auto, lrcp joins the candidates).")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULTS["method"], show_default=True,
              help="CP solver: nls (Gauss-Newton) or als (tensorly ALS baseline).")
@click.option("--max-iter", default=DEFAULTS["max_iter"], show_default=True, help="Solver iterations per layer, at most.")
@click.option("--fit-tol", default=DEFAULTS["fit_tol"], show_default=True, metavar="F",
              help="Stop a layer's fit once 10 iterations lower its kernel error by less than this fraction "
                   "(0: run to --max-iter).")
@click.option("--max-time", type=float, default=None,
              help="Seconds per layer for its fit and degeneracy correction together.")
@click.option("--jobs", type=int, default=None, metavar="N",
              help="Layers fitted in parallel processes [default: one per core]; any N gives the same result.")
@click.option("--stabilize", type=click.Choice(["auto", "always", "never"]), default=DEFAULTS["stabilize"],
              show_default=True, help="Degeneracy correction: auto applies it when terms cancel.")
@click.option("--seed", default=DEFAULTS["seed"], show_default=True, help="Random seed of the solver.")
@click.option("--no-rank-cap", is_flag=True,
              help="Keep ranks whose CP form costs more multiply-adds than the original Conv.")
@click.option("--no-rank-align", is_flag=True,
              help="Keep computed ranks (fractions, caps) as they are instead of rounding them down to a "
                   "multiple of 16 (8 below 16) for onnxruntime's NCHWc layout.")
@click.option("--realize", type=click.Choice(["auto", *FORMS]), default=DEFAULTS["realize"], show_default=True,
              help="CP form: cp4 (1x1, kh x 1, 1 x kw, 1x1), cp3 (1x1, kh x kw depthwise, 1x1), or auto: "
                   "time the decomposition's forms and the original layer in onnxruntime and keep the fastest. "
                   "Another decomposition's form (tucker2, svd, gkpd, lrcp4, lrcp3) forces it, untimed.")
@click.option("--threads", default=DEFAULTS["threads"], show_default=True, help="onnxruntime threads that auto times with.")
@click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default=DEFAULTS["opt_level"],
              show_default=True, help="onnxruntime graph optimization level that auto times with.")
@input_shape_option
@click.option("--report", "report_path", type=click.Path(path_type=str), default=None,
              help="Also write the per-layer report: r.html one offline page with charts, r.md Markdown, "
                   "any other name JSON.")
@click.option("--overwrite", is_flag=True, help="Allow -o to be the input model itself.")
@click.option("-q", "--quiet", is_flag=True, help="No table, no progress bar.")
def rewrite_command(model, output, ranks, max_error, target_speedup, budget_macs, max_drop, data, metric, drop_kind,
                    holdout, time_budget, calib, quantize, calib_count, calib_samples,
                    no_recover, recover_steps, recover_time, distill_epochs, distill_time, search,
                    search_storage, study_name,
                    cost, layers, exclude, decomposition, factor_rank, method, max_iter, fit_tol, max_time, jobs, stabilize, seed, no_rank_cap, no_rank_align, realize,
                    threads, opt_level, input_shapes, report_path, overwrite, quiet) -> None:
    """Rewrite the Conv, Gemm and MatMul layers of MODEL as low-rank decompositions (CP by default;
    Tucker-2, SVD, GKPD, low-rank-factor CP, or auto: per layer) and write the faster model to -o."""
    _refuse_unused_options(click.get_current_context(), max_error, target_speedup, budget_macs, calib, max_drop)
    selection = None
    if max_error is not None or target_speedup is not None or budget_macs is not None or max_drop is not None:
        selection = RankSelection(max_error=max_error, target_speedup=target_speedup,
                                  budget_macs=None if budget_macs is None else int(budget_macs),
                                  max_drop=None if max_drop is None else drop_from_percent(max_drop, drop_kind).max_drop,
                                  drop=drop_kind, metric=metric, holdout=holdout,
                                  calib_count=calib_count, search=search, cost=cost,
                                  storage=search_storage, study_name=study_name)
    config = RewriteConfig(ranks=tuple(ranks), selection=selection, layers=layers, exclude=exclude, method=method,
                           max_iter=max_iter, fit_tol=fit_tol, jobs=jobs, max_time=max_time, stabilize=stabilize, seed=seed,
                           cap_rank=not no_rank_cap, align_ranks=not no_rank_align, realize=realize, threads=threads, opt_level=opt_level,
                           input_shapes=parse_input_shapes(input_shapes), calib=calib, calib_samples=calib_samples,
                           recover=not no_recover, recover_steps=recover_steps, recover_time=recover_time,
                           distill_epochs=distill_epochs, distill_time=distill_time,
                           decomposition=decomposition, factor_rank=factor_rank, quantize=quantize, data=data,
                           time_budget=time_budget)
    # Refuse a bad output before spending minutes on fits.
    check_output_path(Path(output), protect=model, overwrite=overwrite)
    if report_path:
        check_output_path(report_path, protect=[model, output], option="--report")
    if selection is not None and selection.storage:
        from onnx_cp.ranks.refine import open_storage

        open_storage(selection.storage)  # a malformed or unreachable database fails before the fits
    with progress_view(make_console(stderr=True), quiet) as progress:
        result = rewrite_with_report(model, config, progress=progress)
    save_model(result.model, output, overwrite=overwrite, protect=model)
    report = for_cli(result.report)
    if report_path:
        save_text(_report_text(report, report_path), report_path, protect=[model, output])
    if not quiet:
        out = make_console()
        render_rewrite(report, out)
        out.print(f"wrote {output}" + _speed_summary(report, threads, _batch(config.input_shapes)),
                  markup=False, highlight=False)


def _refuse_unused_options(ctx: click.Context, max_error, target_speedup, budget_macs, calib, max_drop) -> None:
    """One line naming the mode an option given on the command line needs, when it is off."""
    on = {flag for flag, value in (("--max-error", max_error), ("--target-speedup", target_speedup),
                                   ("--budget-macs", budget_macs), ("--calib", calib), ("--max-drop", max_drop))
          if value is not None}
    for name, needs in MODE_OPTIONS.items():
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE or on & set(needs):
            continue
        flag = next(p.opts[0] for p in ctx.command.params if p.name == name)
        raise OnnxCpError(f"{flag} is used by {' or '.join(needs)}, which this command does not give; add "
                          f"{'one of them' if len(needs) > 1 else 'it'}, or leave {flag} out", usage=True)


def _report_text(report, path: str) -> str:
    """The report in the format ``--report``'s suffix names: .html/.htm a page, .md/.markdown Markdown, else JSON."""
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        from onnx_cp.report_html import render_html

        return render_html(report.to_dict())
    if suffix in (".md", ".markdown"):
        from onnx_cp.report_markdown import render_markdown

        return render_markdown(report.to_dict())
    return report.to_json()


NOISY_CHECK = "onnx-cp bench on the two files"


def _batch(shapes) -> int:
    """The batch the model was timed at: the given input shape's first dimension, else 1."""
    return next((int(shape[0]) for shape in shapes.values() if len(shape)), 1)


def _speed_summary(report, threads: int, batch: int) -> str:
    speed = report.speed
    if not speed:
        return ""
    spread = speed.get("spread") or 0.0
    # how sure the figure is: the runs' width, and a word where the machine was busy while timing
    sure = f", runs spread {spread:.0%}" + (f": a busy machine, check with {NOISY_CHECK}" if speed.get("busy") else "")
    return (f": {speed['speedup']:.2f}x the input's speed in onnxruntime ({speed['original_ms']:.3f} -> "
            f"{speed['rewritten_ms']:.3f} ms, {threads} thread{'s' if threads > 1 else ''}, batch {batch}{sure})")


"""``onnx-cp bench``: whole-model latency of one or more models, optionally per layer."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from onnx_cp.bench import BenchConfig, OPT_LEVELS, render_html, render_json, render_markdown, render_terminal, run_bench
from onnx_cp.commands.options import ProjectCommand, make_console, parse_input_shapes
from onnx_cp.errors import OnnxCpError
from onnx_cp.model_io import check_output_path, save_text


@click.command("bench", cls=ProjectCommand)
@click.argument("models", nargs=-1, required=True, metavar="MODEL.onnx [MODEL.onnx ...]")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads per session.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per model first.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per model.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Fix a graph input's shape (repeatable); needed when a dimension other than the first "
                   "is dynamic.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Size of a dynamic first input dimension (an --input-shape wins).")
@click.option("--opt-level", default="all", show_default=True, metavar="|".join(OPT_LEVELS),
              help="onnxruntime graph optimization level.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--per-node", is_flag=True,
              help="Also profile each layer; with several models, compare the first against each other.")
@click.option("--json", "json_path", metavar="PATH|-", help="Write the report as JSON ('-': stdout).")
@click.option("--markdown", "markdown_path", metavar="PATH", help="Write the report as Markdown.")
@click.option("--html", "html_path", metavar="PATH", help="Write the report as one self-contained HTML page.")
def bench_command(models: tuple[str, ...], threads: int, warmup: int, runs: int, input_shapes: tuple[str, ...],
                  batch: int, opt_level: str, seed: int, per_node: bool, json_path: str | None,
                  markdown_path: str | None, html_path: str | None) -> None:
    """Time MODELs in onnxruntime's CPU execution provider, run in alternation on the same random inputs.

    Give the original model first and the rewritten one second to see speed-ups; with --per-node
    the profiler splits the time by layer and lines up each original Conv with its CP rewrite.
    """
    config = BenchConfig(threads=threads, warmup=warmup, runs=runs, input_shapes=parse_input_shapes(input_shapes),
                         batch=batch, opt_level=opt_level.lower(), seed=seed)
    outputs = [(option, path) for option, path in
               (("--json", json_path), ("--markdown", markdown_path), ("--html", html_path)) if path]
    for option, path in outputs:
        _check_writable(option, path, allow_stdout=option == "--json")
        if path != "-":
            check_output_path(path, protect=list(models), option=option)

    with _progress() as progress:
        tasks: dict[str, int] = {}

        def callback(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task("timing" if phase == "latency" else "profiling", total=total)
            progress.update(tasks[phase], completed=done)

        report = run_bench(list(models), config, per_node=per_node, callback=callback)

    render_terminal(report, make_console(stderr=json_path == "-"))
    renderers = {"--json": render_json, "--markdown": render_markdown, "--html": render_html}
    for option, path in outputs:
        text = renderers[option](report)
        if path == "-":
            click.echo(text)
        else:
            save_text(text + ("" if text.endswith("\n") else "\n"), path, protect=list(models), option=option)


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _check_writable(option: str, path: str, *, allow_stdout: bool) -> None:
    """Refuse an output path up front rather than after minutes of timing."""
    if path == "-":
        if allow_stdout:
            return
        raise OnnxCpError(f"{option} - is not supported; give a file path (only --json can go to stdout)",
                          usage=True)
    target = Path(path)
    if target.is_dir():
        raise OnnxCpError(f"{option} {path!r} is a directory; give a file path such as {target / 'bench'}"
                          f"{'.json' if option == '--json' else '.md' if option == '--markdown' else '.html'}",
                          usage=True)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxCpError(f"{option} {path!r}: directory {str(parent)!r} does not exist; create it first",
                          usage=True)


if __name__ == "__main__":  # pragma: no cover
    bench_command(sys.argv[1:])

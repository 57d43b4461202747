"""Option parsers shared by several subcommands."""
from __future__ import annotations

import dataclasses

import click

from onnx_cp.errors import OnnxCpError, cli_text
from onnx_cp.shapes import parse_input_shapes  # noqa: F401 (the subcommands import it from here)


def one_line(text: str) -> str:
    """``text`` on one line: an error is one line on stderr, whatever the message held."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class OneLineUsageError(click.UsageError):
    """click's usage errors (missing option, bad value, unknown command) as one line, not three."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"onnx-cp: error: {one_line(self.format_message())}{hint}", err=True)


class OneLineUsage:
    """Mixin for click commands and groups: argument errors become ``OneLineUsageError``."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            if isinstance(exc, OneLineUsageError):
                raise
            raise OneLineUsageError(exc.format_message(), exc.ctx) from None


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return isinstance(root.obj, dict) and bool(root.obj.get("debug"))


class ProjectCommand(OneLineUsage, click.Command):
    """Ends every failure with one line on stderr, so each command behaves the same inside the
    ``onnx-cp`` group and when invoked on its own:

    - ``OnnxCpError``: its message; exit 2 for usage errors, else 1.
    - ``OSError`` (disk full, permissions, a vanished file): the file and the system's reason; exit 1.
    - anything else is a bug: its type and message and how to get the traceback; exit 1.
    - Ctrl-C: one line, exit 130. Outputs are written atomically at the end, so none exists yet.

    ``--debug`` on the group shows the traceback instead (Ctrl-C stays one line).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("onnx-cp: interrupted; no output was written", err=True)
            ctx.exit(130)
        except OnnxCpError as exc:
            if _debug(ctx):
                raise
            click.echo(f"onnx-cp: error: {one_line(cli_text(exc))}", err=True)
            ctx.exit(2 if exc.usage else 1)
        except OSError as exc:
            if _debug(ctx):
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
            click.echo(f"onnx-cp: error: {where}{reason}; check the path, its permissions and free "
                       "disk space", err=True)
            ctx.exit(1)
        except MemoryError:
            if _debug(ctx):
                raise
            click.echo("onnx-cp: error: out of memory; use a machine with more memory, or rewrite fewer "
                       "layers at a time (--layers)", err=True)
            ctx.exit(1)
        except Exception as exc:
            if _debug(ctx):
                raise
            message = one_line(str(exc))[:300]
            click.echo(f"onnx-cp: error: internal error in '{ctx.command_path}' ({type(exc).__name__}"
                       f"{': ' + message if message else ''}); this is a bug: rerun with 'onnx-cp --debug "
                       f"{ctx.info_name} ...' for the traceback and report it", err=True)
            ctx.exit(1)


def for_cli(report):
    """A copy of a report (rewrite, inspect, fine-tune) whose notes, layer reasons and loss rules
    name the CLI's flags where the library's name API parameters (``onnx_cp.errors.param``): what
    the CLI prints and writes."""
    def each(items, name):
        return [dataclasses.replace(item, **{name: None if getattr(item, name) is None
                                             else cli_text(getattr(item, name))}) for item in items]

    changes = {"notes": [cli_text(note) for note in report.notes]}
    if hasattr(report, "layers"):
        changes["layers"] = each(report.layers, "reason")
    if hasattr(report, "outputs"):
        changes["outputs"] = each(report.outputs, "rule")
    return dataclasses.replace(report, **changes)


input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Fix a graph input's shape (repeatable); dynamic dimensions otherwise default to 1.",
)


PIPE_WIDTH = 200  # columns of output to a pipe or file when COLUMNS does not say


def make_console(*, stderr: bool = False, quiet: bool = False):
    """A rich console as wide as the terminal; to a pipe or file, ``COLUMNS`` wide if that is set,
    else ``PIPE_WIDTH`` (wide enough for every table, narrow enough to read)."""
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None  # rich asks the terminal, or reads COLUMNS
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(stderr=stderr, quiet=quiet, width=width)

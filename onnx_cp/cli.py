"""The ``onnx-cp`` command line: a thin layer over the Python API.

Each subcommand lives in ``onnx_cp.commands`` and prints ``OnnxCpError`` as one line on
stderr (exit 1, or 2 for usage errors); this module only assembles the group.
"""
from __future__ import annotations

import sys

import click

from onnx_cp.commands.options import OneLineUsage, OneLineUsageError


class _Group(OneLineUsage, click.Group):
    """One line on stderr for argument errors and Ctrl-C, never a traceback (commands print
    their own errors; see ``ProjectCommand``)."""

    def resolve_command(self, ctx: click.Context, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise OneLineUsageError(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("onnx-cp: interrupted; no output was written", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="onnx-cp")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Make CNNs faster in onnxruntime: rewrite their Conv, Gemm and MatMul layers as low-rank
    decompositions (CP, Tucker-2, SVD, GKPD, low-rank-factor CP), chosen per layer by measured speed."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    from onnx_cp.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="onnx-cp")


if __name__ == "__main__":
    main(sys.argv[1:])

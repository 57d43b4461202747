"""``onnx-cp inspect``: list every convolution and whether CP can rewrite it."""
from __future__ import annotations

import json

import click

from onnx_cp.commands.options import ProjectCommand, for_cli, input_shape_option, make_console, parse_input_shapes
from onnx_cp.inspect import inspect_model, render_inspect


@click.command("inspect", cls=ProjectCommand)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def inspect_command(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """Show every Conv of MODEL: attributes, cost, and CP eligibility."""
    report = for_cli(inspect_model(model, parse_input_shapes(input_shapes)))
    if as_json:
        data = report.to_dict()
        data.pop("method")
        click.echo(json.dumps(data, indent=2))
    else:
        render_inspect(report, make_console())

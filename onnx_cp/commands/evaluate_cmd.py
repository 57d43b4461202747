"""``onnx-cp evaluate``: top-1 / top-5 accuracy of a model on a labelled image set."""
from __future__ import annotations

import json
from pathlib import Path

import click

from onnx_cp.commands.options import ProjectCommand
from onnx_cp.errors import OnnxCpError
from onnx_cp.evaluate import evaluate, load_dataset


@click.command("evaluate", cls=ProjectCommand)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="An .npz with arrays x (N,C,H,W float32, preprocessed as the model expects) and y (N int labels).",
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Images per onnxruntime call (a fixed batch dimension in the model wins).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads [default: onnxruntime's choice].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a line.")
def evaluate_command(model: Path, data: Path, batch_size: int, threads: int | None, as_json: bool) -> None:
    """Measure MODEL's top-1 and top-5 accuracy in onnxruntime (CPU) on --data."""
    x, y = load_dataset(data)
    if y is None:
        raise OnnxCpError(f"{data}: holds no labels y; pass an .npz with arrays x and y to measure accuracy")
    acc = evaluate(model, x, y, batch_size=batch_size, threads=threads)
    if as_json:
        click.echo(json.dumps({"model": str(model), "data": str(data),
                               "top1": acc.top1, "top5": acc.top5, "count": acc.count}))
    else:
        click.echo(f"{model}: top-1 {acc.top1:.2%}  top-5 {acc.top5:.2%}  ({acc.count} images)")

"""``onnx-cp finetune``: train a rewritten model end to end, export it back to ONNX, compare accuracy."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnx_cp.commands.options import ProjectCommand, for_cli, input_shape_option, make_console, parse_input_shapes
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import runtime_inputs
from onnx_cp.model_io import check_output_path, load_model, save_model, save_text

if TYPE_CHECKING:
    import onnx

    from onnx_cp.finetune import FinetuneConfig, FinetuneReport

_DATA_HELP = ("An .npz with arrays x (N,C,H,W float32, preprocessed as the model expects) and y (N int "
              "labels), an .npz or .npy of x alone, a folder with one subfolder of images per class, or a "
              "folder of images alone (without labels --teacher is needed: distillation alone).")


@click.command("finetune", cls=ProjectCommand)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the fine-tuned model.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Training data. " + _DATA_HELP)
@click.option("--val", type=click.Path(path_type=Path), default=None,
              help="Validation data (same formats), for per-epoch and before/after accuracy.")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The model before the rewrite: distill every output the two share (as well as the labels, "
                   "when there are any).")
@click.option("--class-axis", "class_axes", multiple=True, metavar="[OUTPUT=]AXIS|mse",
              help="Distillation loss of an output (or, without OUTPUT=, of every output): KL along class axis "
                   "AXIS, or mse (normalized squared error, for regression and detection heads). Repeatable. "
                   "Default per output: 2-D (N, C) -> KL on axis 1; 3-D (T, N, C) -> KL on the last axis; "
                   "others -> mse.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate (cosine decay).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=4.0, show_default=True, type=float,
              help="Distillation temperature (softens the teacher's and the model's logits).")
@click.option("--distill-weight", default=0.5, show_default=True, type=float,
              help="With labels and --teacher: loss = (1 - w) * cross-entropy + w * distillation.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float, help="AdamW weight decay.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds initial state and shuffling.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... [default: cuda when available, else cpu].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and onnxruntime, per worker [default: their choice; with several "
                   "workers, the machine's cores shared out among them].")
@click.option("--nproc", default=1, show_default=True, type=int,
              help="Data-parallel training processes on this machine (torch.distributed: gloo on the CPU, one "
                   "GPU each with nccl); --batch-size is split among them. Under torchrun, leave it out.")
@input_shape_option
@click.option("--mean", default=None, metavar="M[,M,M]",
              help="Image folders: per-channel mean subtracted after scaling pixels to [0, 1].")
@click.option("--std", default=None, metavar="S[,S,S]", help="Image folders: per-channel std divided by.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the training report and accuracies as JSON.")
@click.option("--overwrite", is_flag=True, help="Allow -o to be the input model itself.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, no table.")
def finetune_command(model: Path, output: Path, data: Path, val: Path | None, teacher: Path | None, epochs: int,
                     lr: float, batch_size: int, temperature: float, distill_weight: float, weight_decay: float,
                     seed: int, device: str | None, threads: int | None, nproc: int, input_shapes, mean, std,
                     report_path: Path | None, overwrite: bool, quiet: bool, class_axes: tuple[str, ...]) -> None:
    """Fine-tune MODEL (a rewritten model) on --data and write it to -o with the same CP structure.

    With --nproc N, N processes train on shares of the data (torch.distributed); under torchrun the
    command joins the group torchrun starts, on one machine or several. Rank 0 writes -o and --report.
    """
    from onnx_cp.finetune import FinetuneConfig
    from onnx_cp.finetune.distill import parse_class_axes
    from onnx_cp.finetune.distributed import launch, world_from_env

    if nproc < 1:
        raise OnnxCpError(f"--nproc must be at least 1 (the number of training processes), got {nproc}",
                          usage=True)
    joined = world_from_env()
    if joined is not None and nproc > 1:
        raise OnnxCpError(f"--nproc {nproc} under torchrun (WORLD_SIZE={joined.size}): torchrun starts the "
                          "workers (--nproc-per-node); leave out --nproc", usage=True)
    workers = joined.size if joined is not None else nproc
    if batch_size % workers:
        raise OnnxCpError(f"--batch-size {batch_size} does not split evenly among {workers} workers; give a "
                          f"multiple of {workers} (each worker takes batch-size / {workers} samples a step)",
                          usage=True)
    config = FinetuneConfig(epochs=epochs, lr=lr, temperature=temperature, distill_weight=distill_weight,
                            weight_decay=weight_decay, seed=seed, device=device,
                            class_axes=parse_class_axes(class_axes))
    _check_importable(model, teacher)  # before any data is read or worker started
    if joined is None or joined.leader:  # rank 0 writes; another machine's paths need not exist
        check_output_path(output, protect=model, overwrite=overwrite)
        if report_path:
            check_output_path(report_path, protect=[model, output], option="--report")
    job = _Job(model, data, val, teacher, config, batch_size, threads, tuple(input_shapes), mean, std, quiet)
    if nproc > 1:
        _check_devices(device, nproc)
        outcome = launch(_run, (job,), nproc)  # rank 0's outcome, once every worker has finished
    else:
        outcome = _run(job)  # alone, or one of torchrun's workers
    if outcome is None:
        return  # a torchrun worker other than rank 0: rank 0 writes
    save_model(outcome.model, output, overwrite=overwrite, protect=model)
    report = for_cli(outcome.report)
    if report_path:
        accuracy = {k: {"top1": a.top1, "top5": a.top5, "count": a.count} for k, a in outcome.accuracy.items()}
        payload = {"model": str(model), "output": str(output), "data": str(data), "world_size": report.world_size,
                   "accuracy_on": outcome.where, "accuracy": accuracy, "report": report.to_dict()}
        save_text(json.dumps(payload, indent=2), report_path, protect=[model, output])
    if not quiet:
        _render(make_console(), outcome.accuracy, outcome.where, report)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        click.echo(f"wrote {output}")


@dataclass(frozen=True)
class _Job:
    """What every worker needs to do its part (picklable: workers are new processes)."""

    model: Path
    data: Path
    val: Path | None
    teacher: Path | None
    config: FinetuneConfig
    batch_size: int  # for all workers together
    threads: int | None
    input_shapes: tuple[str, ...]
    mean: str | None
    std: str | None
    quiet: bool


@dataclass(frozen=True)
class _Outcome:
    """Rank 0's result: what the command writes and shows."""

    model: onnx.ModelProto
    report: FinetuneReport
    accuracy: dict
    where: str


def _run(job: _Job) -> _Outcome | None:
    """One worker's part: load the data, train on this worker's share; rank 0 also measures the
    accuracy before and after and returns the outcome (the other workers return None)."""
    from onnx_cp.evaluate import evaluate
    from onnx_cp.finetune import finetune_with_report
    from onnx_cp.finetune._deps import require_torch
    from onnx_cp.finetune.distributed import process_group, threads_per_worker

    torch, _ = require_torch()
    with process_group(job.config.device) as (world, _device):
        threads = job.threads or (threads_per_worker(world.local_size) if world.size > 1 else None)
        if threads:
            torch.set_num_threads(threads)
        source = load_model(job.model)
        teacher_model = load_model(job.teacher) if job.teacher is not None else None
        shape = _image_shape(source, parse_input_shapes(job.input_shapes))
        x, y, classes = _load(job.data, shape, job.mean, job.std, None)
        xv, yv, _ = _load(job.val, shape, job.mean, job.std, classes) if job.val is not None else (None, None, None)
        if y is None and teacher_model is None:
            raise OnnxCpError(f"{job.data}: holds no labels; pass an .npz with x and y, or --teacher to distill "
                              "from", usage=True)

        # Accuracy is measured on --val, else on the training data (labelled so in the table).
        ex, ey, where = (xv, yv, str(job.val)) if yv is not None else (x, y, f"{job.data} (training data)")
        accuracy: dict[str, object] = {}
        if ey is not None and world.leader:
            if teacher_model is not None:
                accuracy["before rewrite (teacher)"] = evaluate(teacher_model, ex, ey, threads=threads)
            accuracy["after rewrite (input)"] = evaluate(source, ex, ey, threads=threads)

        loader, val_loader = _loaders(torch, job, world, (x, y), (xv, yv))
        quiet = job.quiet or not world.leader
        with _Bars(make_console(stderr=True, quiet=quiet), quiet) as bars:
            result = finetune_with_report(source, loader, teacher=teacher_model, val_loader=val_loader,
                                          callback=bars.update, **_settings(job.config))
    if not world.leader:
        return None
    if ey is not None:
        accuracy["after fine-tuning"] = evaluate(result.model, ex, ey, threads=threads)
    return _Outcome(result.model, result.report, accuracy, where)


def _loaders(torch, job: _Job, world, train, val):
    """The training loader (shuffled; each worker's share and its part of the batch) and the validation
    loader (each worker's share, rank::size) or None."""
    data = torch.utils.data
    train_set = _dataset(torch, *train)
    if world.size == 1:
        loader = data.DataLoader(train_set, batch_size=job.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(job.config.seed))
    else:
        sampler = data.DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=job.config.seed)
        loader = data.DataLoader(train_set, batch_size=job.batch_size // world.size, sampler=sampler)
    if val[1] is None:
        return loader, None
    val_set = _dataset(torch, *val)
    if world.size > 1:
        val_set = data.Subset(val_set, range(world.rank, len(val_set), world.size))
    return loader, data.DataLoader(val_set, batch_size=max(job.batch_size, 256))


def _check_importable(model: Path, teacher: Path | None) -> None:
    """Refuse, naming them, the operators of MODEL or --teacher that onnx2torch cannot convert."""
    from onnx_cp.finetune import normalize
    from onnx_cp.finetune.converters import require_converters

    for path in (model, teacher):
        if path is not None:
            require_converters(normalize(load_model(path)), str(path))


def _check_devices(device: str | None, nproc: int) -> None:
    """Refuse, before starting workers, a device they cannot share (one GPU each)."""
    from onnx_cp.finetune.distributed import World, pick_device

    pick_device(device, World(rank=nproc - 1, size=nproc, local_rank=nproc - 1, local_size=nproc))


def _settings(config) -> dict:
    return {name: getattr(config, name) for name in
            ("epochs", "lr", "temperature", "distill_weight", "weight_decay", "seed", "device", "class_axes")}


def _image_shape(model, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """C x H x W for image folders: --input-shape, else the model's static input shape."""
    inp = next(iter(runtime_inputs(model.graph)), None)
    if inp is None:
        return None
    if inp.name in shapes:
        return shapes[inp.name][-3:]
    if shapes:
        raise OnnxCpError(f"--input-shape names {sorted(shapes)} but the model's input is {inp.name!r}",
                          usage=True)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    return tuple(dims[1:]) if len(dims) == 4 and all(dims[1:]) else None


def _load(path: Path, shape, mean, std, classes):
    """(x, y or None, class names or None) from an .npz/.npy, a folder of class folders, or a folder of
    images alone (no labels)."""
    from onnx_cp.evaluate import load_dataset
    from onnx_cp.finetune.data import class_folders, load_image_folder, load_images, parse_floats

    if path.is_dir():
        if shape is None:
            raise OnnxCpError(f"{path}: reading images needs their size; the model's input is dynamic, so "
                              "pass --input-shape NAME=1x3x224x224", usage=True)
        mean_v, std_v = parse_floats(mean, "--mean"), parse_floats(std, "--std")
        if not class_folders(path):
            return load_images(path, shape, mean=mean_v, std=std_v), None, None
        return load_image_folder(path, shape, mean=mean_v, std=std_v, classes=classes)
    if mean is not None or std is not None:
        raise OnnxCpError("--mean/--std apply to image folders only; store .npz data already normalized",
                          usage=True)
    x, y = load_dataset(path)
    return x, y, None


def _dataset(torch, x, y):
    tensors = [torch.from_numpy(x)] + ([torch.from_numpy(y)] if y is not None else [])
    return torch.utils.data.TensorDataset(*tensors)


class _Bars:
    """One rich progress bar per epoch: batches done, running loss and accuracy, validation accuracy."""

    def __init__(self, console, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                                 disable=quiet)
        self.tasks: dict[int, object] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step) -> None:
        if step.epoch not in self.tasks:
            self.tasks[step.epoch] = self.progress.add_task(f"epoch {step.epoch}/{step.epochs}",
                                                            total=step.batches, stats="")
        stats = f"loss {step.loss:.4f}"
        if step.accuracy is not None:
            stats += f"  acc {step.accuracy:.2%}"
        if step.val_accuracy is not None:
            stats += f"  val {step.val_accuracy:.2%}"
        self.progress.update(self.tasks[step.epoch], completed=step.batch, stats=stats)


def _render(console, accuracy: dict, where: str, report) -> None:
    from rich.table import Table
    from rich.text import Text

    if accuracy:
        table = Table(title=f"accuracy on {where}", title_justify="left")
        for col, justify in (("model", "left"), ("top-1", "right"), ("top-5", "right"), ("images", "right")):
            table.add_column(col, justify=justify)
        for name, acc in accuracy.items():
            table.add_row(name, f"{acc.top1:.2%}", f"{acc.top5:.2%}", str(acc.count))
        console.print(table)
    how = " + ".join(k for k, on in (("labels", report.labelled), ("distillation", report.distilled)) if on)
    workers = f" x {report.world_size} workers" if report.world_size > 1 else ""
    console.print(f"fine-tuned {len(report.epochs)} epoch(s), {report.steps} steps ({how}) on {report.device}"
                  f"{workers} in {report.seconds:.1f} s ({report.samples_per_second:.0f} samples/s); exported model "
                  f"matches torch within {report.export_difference:.2g}")
    if report.outputs:
        table = Table(title="distillation on the first batch", title_justify="left")
        for col, justify in (("output", "left"), ("loss", "left"), ("why", "left"), ("before", "right"),
                             ("after", "right")):
            table.add_column(col, justify=justify)
        for out in report.outputs:
            after = f"{out.after:.4g}" if out.after is not None else "-"
            table.add_row(Text(out.name), out.loss, Text(out.rule), f"{out.before:.4g}", after)  # names as they are
        console.print(table)

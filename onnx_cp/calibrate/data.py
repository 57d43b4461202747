"""The calibration inputs of one rewrite: read and checked once (an .npz or .npy file, or a folder of
images), split once into the samples that fit and recover the layers and those held back for the
report, and the first few of them fed to rank selection's proxy. Without a file the proxy gets
seeded random inputs (and the report says how little they tell)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from onnx_cp.errors import Message, OnnxCpError, param, shape_param
from onnx_cp.graph import runtime_inputs

# Share of the samples held back: the per-layer and whole-model output errors of the report are
# measured on those alone.
HELD_BACK = 0.2


@dataclass(frozen=True)
class CalibrationData:
    """Samples for one input: ``x[:train]`` fit and recover, ``x[train:samples]`` are held back;
    the first ``proxy_count`` feed the rank proxy."""

    source: str | None  # the path given, or None for random proxy inputs
    input_name: str
    x: np.ndarray  # float32 (N, ...)
    samples: int  # how many fit, recover and are held back (the rest only feed the proxy)
    train: int
    proxy_count: int
    note: str | None = None  # why the proxy's inputs say little, when they are random

    @classmethod
    def read(cls, model: onnx.ModelProto, path: str | None, samples: int, proxy_count: int, seed: int,
             shapes: Mapping[str, tuple[int, ...]]) -> "CalibrationData":
        """The data of ``path`` (refused in one line when it does not fit the model), or, without
        one, ``proxy_count`` seeded random inputs for the proxy alone."""
        name, shape = input_shape(model, shapes)
        if path is None:
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((proxy_count, *shape[1:])).astype(np.float32)
            note = Message(f"no {param('calib')} given: the proxy used {proxy_count} random inputs, which say little "
                           f"about real data; pass {calib_param('images/')} or {calib_param('calib.npz')}")
            return cls(None, name, x, 0, 0, proxy_count, note)
        return cls.of(read_calibration(model, path, max(samples, proxy_count), shapes), path, name, samples,
                      proxy_count)

    @classmethod
    def of(cls, x: np.ndarray, source: str, input_name: str, samples: int, proxy_count: int) -> "CalibrationData":
        """Samples already read (checked by their reader), split as ``read`` splits a file's."""
        x = np.asarray(x, np.float32)[:max(samples, proxy_count)]
        used = min(samples, len(x))
        held = max(int(round(used * HELD_BACK)), 1) if used > 1 else 0
        return cls(source, input_name, x, used, used - held, min(proxy_count, len(x)))

    @property
    def fitting(self) -> np.ndarray:
        """The samples that fit and recover the layers, then the held-back ones."""
        return self.x[:self.samples]

    @property
    def held_back(self) -> np.ndarray:
        return self.x[self.train:self.samples]

    @property
    def int8_inputs(self) -> np.ndarray:
        """The samples INT8's activation ranges are calibrated on: the fitting ones (all of them
        when none is held back)."""
        return self.x[:self.train] if self.train else self.fitting

    def proxy_feeds(self) -> list[dict[str, np.ndarray]]:
        """One feed per proxy sample (the proxy runs them one by one)."""
        return [{self.input_name: self.x[i:i + 1]} for i in range(self.proxy_count)]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def calib_param(path) -> str:
    """The calibration data in a message: ``calib='data.npz'`` for the API, ``--calib data.npz`` for the CLI."""
    return param("calib", repr(str(path)), cli=str(path))


def input_shape(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
    inputs = runtime_inputs(model.graph)
    if len(inputs) != 1:
        raise OnnxCpError(f"rank selection feeds one input, but the model has {len(inputs)} "
                          f"({', '.join(i.name for i in inputs)})")
    arg = inputs[0]
    if arg.name in shapes:
        return arg.name, tuple(shapes[arg.name])
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in arg.type.tensor_type.shape.dim]
    if any(d is None for d in dims[1:]):
        shown = "x".join("N" if d is None else str(d) for d in dims)
        raise OnnxCpError(f"input {arg.name!r} has dynamic dimensions ({shown}); fix them with "
                          f"{shape_param(arg.name, (1, 3, 224, 224))} (your model's size)", usage=True)
    return arg.name, (1, *dims[1:])


def read_calibration(model: onnx.ModelProto, path: str, count: int,
                     shapes: Mapping[str, tuple[int, ...]]) -> np.ndarray:
    """The first ``count`` samples of ``path`` as one float32 array (N, ...) that fits the
    model's one input; refused with one line when the shape or dtype does not fit, a sample
    holds NaN or Inf, or there is nothing to read."""
    name, shape = input_shape(model, shapes)
    sample = (1, *shape[1:])
    data = _read(Path(path), sample)
    if data.ndim == len(sample) - 1:
        data = data[None]
    if tuple(data.shape[1:]) != tuple(sample[1:]):
        raise OnnxCpError(f"{calib_param(path)}: samples have shape {list(data.shape[1:])}, the model's input "
                          f"{name!r} wants {list(sample[1:])}", usage=True)
    if data.dtype.kind not in "fiu":
        raise OnnxCpError(f"{calib_param(path)}: samples are {data.dtype}, the model's input {name!r} takes floats; "
                          "save them as float32", usage=True)
    if len(data) == 0:
        raise OnnxCpError(f"{calib_param(path)}: holds no samples", usage=True)
    data = data[:count].astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(data.reshape(len(data), -1)).all(axis=1))
    if len(bad):
        raise OnnxCpError(f"{calib_param(path)}: {len(bad)} sample(s) hold NaN or Inf (the first is sample {bad[0]}); "
                          "drop or clean them", usage=True)
    return data


def _read(path: Path, sample: tuple[int, ...]) -> np.ndarray:
    if not path.exists():
        raise OnnxCpError(f"{calib_param(path)}: no such file or folder", usage=True)
    if path.is_dir():
        return _images(path, sample)
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                if "x" not in archive.files:
                    raise OnnxCpError(f"{calib_param(path)}: the .npz needs an array 'x' (N, C, H, W); it has "
                                      f"{', '.join(archive.files) or 'none'}")
                return np.asarray(archive["x"])
        if path.suffix == ".npy":
            return np.load(path)
    except (ValueError, OSError) as exc:
        raise OnnxCpError(f"{calib_param(path)}: cannot read it ({exc})") from None
    raise OnnxCpError(f"{calib_param(path)}: give an .npz (array x), an .npy, or a folder of images", usage=True)


def _images(folder: Path, sample: tuple[int, ...]) -> np.ndarray:
    """RGB images resized to the input's H x W, scaled to [0, 1], as N x 3 x H x W."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxCpError(f"{param('calib')} with a folder of images needs Pillow: pip install pillow") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OnnxCpError(f"{calib_param(folder)}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder; "
                          "point it at a folder of images, an .npz (array x) or an .npy", usage=True)
    if len(sample) != 4 or sample[1] != 3:
        raise OnnxCpError(f"{calib_param(folder)}: images need an input of shape 1x3xHxW, the model has {list(sample)}",
                          usage=True)
    height, width = sample[2], sample[3]
    arrays = []
    for file in files:
        with Image.open(file) as image:
            rgb = image.convert("RGB").resize((width, height))
        arrays.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(arrays)

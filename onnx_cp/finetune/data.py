"""Training data for the ``finetune`` command: an .npz (``onnx_cp.evaluate.load_dataset``), a
folder of images with one subfolder per class, or a folder of images alone (no labels: for
distillation from a teacher).

    x, y, classes = load_image_folder("train/", (3, 224, 224), mean=(0.485, 0.456, 0.406),
                                      std=(0.229, 0.224, 0.225))
    x = load_images("unlabelled/", (1, 64, 256))

Images are read with Pillow, converted to grey (C=1) or RGB (C=3), resized to H x W (bilinear),
scaled to [0, 1], then normalized per channel: (x - mean) / std. Labels are the subfolders'
positions in sorted order (or in ``classes`` when given, so a validation folder uses the
training folder's numbering). Everything is held in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from onnx_cp.errors import OnnxCpError, param, spelled

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image_folder(path: str | Path, shape: Sequence[int], *, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None,
                      classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(x, y, classes)``: x N x C x H x W float32, y N int64, the class names in label order."""
    root = _folder(path, "a folder with one subfolder of images per class, or an .npz")
    found = class_folders(root)
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise OnnxCpError(f"{root}: class folders {unknown} are not among the training classes {names}")
    files = [(f, k) for k, name in enumerate(names) if (root / name).is_dir()
             for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise OnnxCpError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class subfolders "
                          f"{found or '(none)'}; lay it out as {root}/<class>/<image>")
    x = _read_images([f for f, _ in files], shape, mean, std)
    y = np.array([k for _, k in files], np.int64)
    return x, y, names


def load_images(path: str | Path, shape: Sequence[int], *, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> np.ndarray:
    """x (N x C x H x W float32) from the images directly inside ``path`` (no labels), in name order."""
    root = _folder(path, "a folder of images, or an .npy/.npz")
    files = [f for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise OnnxCpError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it; put the images in the "
                          "folder itself (or one subfolder per class, for labels)")
    return _read_images(files, shape, mean, std)


def class_folders(root: Path) -> list[str]:
    """The subfolders of ``root`` (its classes, when it holds labelled images), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder(path: str | Path, what: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise OnnxCpError(f"{root}: not a folder; pass {what}")
    return root


def _read_images(files: Sequence[Path], shape: Sequence[int], mean, std) -> np.ndarray:
    """The images resized to H x W, in [0, 1], then (x - mean) / std per channel."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxCpError("reading an image folder needs Pillow: pip install pillow "
                          "(or pass an .npz with arrays x and y)") from None
    c, h, w = _chw(shape)
    mean_a, std_a = _per_channel(mean, c, 0.0, "mean"), _per_channel(std, c, 1.0, "std")
    if np.any(std_a <= 0):
        raise OnnxCpError(f"{param('std', str(list(std_a)))}: every value must be positive", usage=True)
    x = np.empty((len(files), c, h, w), np.float32)
    mode = "L" if c == 1 else "RGB"
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                pixels = np.asarray(img.convert(mode).resize((w, h), Image.BILINEAR), dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise OnnxCpError(f"{file}: not a readable image ({exc}); remove it from the folder") from None
        pixels = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
        x[i] = (pixels / 255.0 - mean_a[:, None, None]) / std_a[:, None, None]
    return x


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``'0.485,0.456,0.406'`` -> a tuple of floats (None stays None)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OnnxCpError(f"{option} {text!r}: write comma-separated numbers, e.g. 0.485,0.456,0.406",
                          usage=True) from None


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3 or dims[0] not in (1, 3) or min(dims) < 1:
        raise OnnxCpError(f"image shape {dims}: expected C x H x W with C = 1 (grey) or 3 (RGB); "
                          f"{spelled('pass shape=(3, 224, 224)', 'set it with --input-shape NAME=1x3x224x224')}",
                          usage=True)
    return dims


def _per_channel(values, c: int, default: float, option: str) -> np.ndarray:
    if values is None:
        return np.full(c, default, np.float32)
    a = np.asarray(values, np.float32).reshape(-1)
    if a.size == 1:
        a = np.full(c, a[0], np.float32)
    if a.size != c:
        raise OnnxCpError(f"{param(option)} has {a.size} values but the images have {c} channels; give 1 or {c}",
                          usage=True)
    return a

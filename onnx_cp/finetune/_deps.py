"""The fine-tuning dependencies (torch, onnx2torch), imported on first use only."""
from __future__ import annotations

from onnx_cp.errors import OnnxCpError

EXTRA_HINT = "fine-tuning needs the 'finetune' extra: pip install 'onnx-cp[finetune]'"


def require_torch():
    """Return ``(torch, onnx2torch)``, or raise OnnxCpError naming the extra that provides them."""
    try:
        import torch
    except ImportError as exc:
        raise OnnxCpError(f"{EXTRA_HINT} (cannot import torch: {exc})") from None
    try:
        import onnx2torch
    except ImportError as exc:
        raise OnnxCpError(f"{EXTRA_HINT} (cannot import onnx2torch: {exc})") from None
    return torch, onnx2torch


def onnx2torch_version() -> str:
    """The installed onnx2torch's version ('' when unknown), for messages."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2torch")
    except PackageNotFoundError:
        return ""

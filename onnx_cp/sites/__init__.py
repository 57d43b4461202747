"""The nodes a decomposition may replace: Convs (conv.py) and Gemm/MatMul (linear.py), behind one protocol (base.Site)."""
from __future__ import annotations

import onnx

from onnx_cp.sites.base import Site
from onnx_cp.sites.conv import CONV_LIKE, LIST_LAYERS, ConvSite, find_convs
from onnx_cp.sites.linear import LinearSite, find_linears


def find_sites(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], decomposition: str) -> list[Site]:
    """Every convolution, and every Gemm and MatMul where ``decomposition`` can take them (svd, auto)."""
    sites: list[Site] = list(find_convs(model, shapes, decomposition))
    if decomposition in ("svd", "auto"):
        sites += find_linears(model, shapes)
    return sites


__all__ = ["CONV_LIKE", "LIST_LAYERS", "ConvSite", "LinearSite", "Site", "find_convs", "find_linears", "find_sites"]

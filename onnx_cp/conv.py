"""What a Conv node computes, whether CP can rewrite it, and what it costs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from onnx_cp.graph import Constant, GraphIndex

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class ConvSpec:
    """The attributes of a 2-D Conv, normalized (defaults filled in, pads explicit unless auto)."""

    out_channels: int
    in_channels: int  # total, i.e. group * weight.shape[1]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    group: int
    auto_pad: str  # NOTSET, VALID, SAME_UPPER or SAME_LOWER

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.group


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def conv_spec(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> ConvSpec | str:
    """Parse a 2-D Conv's attributes against its weight shape, or say why that is impossible."""
    if len(weight_shape) != 4:
        dims = len(weight_shape) - 2
        return f"{dims}-D Conv; only 2-D Conv is rewritten"
    out_c, in_pg, kh, kw = (int(d) for d in weight_shape)
    try:
        attrs = attributes(node)
        kernel = tuple(int(k) for k in attrs.get("kernel_shape", (kh, kw)))
        group = int(attrs.get("group", 1))
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        auto_pad = str(_decode(attrs.get("auto_pad", "NOTSET")) or "NOTSET")
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable attributes ({exc}); the model is damaged"
    if kernel != (kh, kw):
        return f"kernel_shape {list(kernel)} does not match the weight's {[kh, kw]}"
    if min(out_c, in_pg, kh, kw) < 1:
        return f"weight shape {[out_c, in_pg, kh, kw]} has an empty dimension"
    if group < 1 or out_c % group:
        return f"group={group} does not divide the {out_c} output channels"
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        return "strides, dilations or pads have the wrong length for a 2-D Conv"
    if min(strides) < 1:
        return f"strides {list(strides)} must be at least 1"
    if min(dilations) < 1:
        return f"dilations {list(dilations)} must be at least 1"
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"unknown auto_pad {auto_pad!r}"
    if auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad != "NOTSET":
        pads = (0, 0, 0, 0)  # computed from the input size at run time
    if min(pads) < 0:
        return f"negative pads {list(pads)}"
    return ConvSpec(out_c, in_pg * group, (kh, kw), strides, pads, dilations, group, auto_pad)


def shape_problem(spec: ConvSpec, in_shape: tuple[int, ...] | None,
                  out_shape: tuple[int, ...] | None) -> str | None:
    """Why the Conv cannot run on its (known) input shape; None when it can or the shape is unknown."""
    if in_shape is None:
        return None
    if len(in_shape) != 4:
        return f"input is {len(in_shape)}-D ({list(in_shape)}), the weight is for a 2-D Conv"
    if in_shape[1] != spec.in_channels:
        return (f"input has {in_shape[1]} channels, but the weight expects {spec.in_channels} "
                f"({spec.in_per_group} per group x group {spec.group}); the model is inconsistent")
    if spec.auto_pad in ("NOTSET", "VALID"):
        top, left, bottom, right = spec.pads
        for size, before, after, k, d, axis in ((in_shape[2], top, bottom, spec.kernel[0],
                                                 spec.dilations[0], "height"),
                                                (in_shape[3], left, right, spec.kernel[1],
                                                 spec.dilations[1], "width")):
            if size + before + after < d * (k - 1) + 1:
                return (f"the kernel (dilated {d * (k - 1) + 1}) is larger than the padded input "
                        f"{axis} {size + before + after}; the model cannot run")
    return None


def ineligibility(spec: ConvSpec, weight: Constant, refusal: Callable[[ConvSpec], str | None]) -> str | None:
    """Why the decomposition whose ``applies`` is ``refusal`` cannot or should not rewrite this
    Conv; None when it can."""
    dtype = weight.dtype
    if not any(dtype == t for t in _FLOAT_TYPES) and dtype.name != "bfloat16":
        return f"weight dtype {dtype.name} is not floating point"
    problem = refusal(spec)
    if problem:
        return problem
    bad = int(np.count_nonzero(~np.isfinite(weight.value)))
    if bad:
        return f"weight contains {bad} NaN/Inf values; fix the model before rewriting"
    return None


def weight_constant(index: GraphIndex, node: onnx.NodeProto) -> Constant | str:
    if len(node.input) < 2 or not node.input[1]:
        return "Conv has no weight input"
    return index.constant(node.input[1])


@dataclass(frozen=True)
class Cost:
    macs: int | None  # multiply-adds per inference; None when shapes are unknown
    params: int


def conv_cost(spec: ConvSpec, out_shape: tuple[int, ...] | None, has_bias: bool) -> Cost:
    kh, kw = spec.kernel
    params = spec.out_channels * spec.in_per_group * kh * kw + (spec.out_channels if has_bias else 0)
    if out_shape is None:
        return Cost(None, params)
    n, _, ho, wo = out_shape
    return Cost(n * spec.out_channels * ho * wo * spec.in_per_group * kh * kw, params)


def cp4_stage_counts(spec: ConvSpec) -> tuple[bool, bool]:
    """Which depthwise stages the four-conv form keeps: a 1-tap axis needs none."""
    return spec.kernel[0] > 1, spec.kernel[1] > 1


def has_reduce_stage(spec: ConvSpec) -> bool:
    """Whether the CP forms start with a 1x1 reduce: not for a single input channel, whose
    scales fold into the first spatial stage."""
    return spec.in_channels > 1


def cp_cost(kind: str, spec: ConvSpec, rank: int, in_shape: tuple[int, ...] | None,
            out_shape: tuple[int, ...] | None, has_bias: bool) -> Cost:
    """Cost of the CP form ``kind`` (cp4 or cp3) at ``rank`` per group.

    cp4 folds away a depthwise stage with one tap; cp3 has one kh x kw depthwise stage.
    """
    kh, kw = spec.kernel
    g, r = spec.group, rank
    vertical, horizontal = cp4_stage_counts(spec)
    spatial_params = kh * kw if kind == "cp3" else kh * vertical + kw * horizontal
    params = ((spec.in_channels * r if has_reduce_stage(spec) else 0) + g * r * spatial_params + spec.out_channels * r
              + (spec.out_channels if has_bias else 0))
    if in_shape is None or out_shape is None:
        return Cost(None, params)
    n, _, hi, wi = in_shape
    _, _, ho, wo = out_shape
    macs = n * hi * wi * spec.in_channels * r if has_reduce_stage(spec) else 0  # at the input resolution
    if kind == "cp3":
        macs += n * g * r * ho * wo * kh * kw
    else:
        if vertical:
            macs += n * g * r * ho * (wi if horizontal else wo) * kh
        if horizontal:
            macs += n * g * r * ho * wo * kw
    macs += n * ho * wo * spec.out_channels * r  # expand
    return Cost(macs, params)


def align_rank(rank: int) -> int:
    """Round a computed rank down to a multiple of 16 (of 8 below 16; unchanged below 8).

    onnxruntime's NCHWc layout (the fast path for Conv on x86) takes a Conv only when its
    channel counts are multiples of the SIMD block, 8 with AVX2 and 16 with AVX-512. A CP
    chain whose rank is off the block leaves that path and runs about half as fast (measured:
    the nudenet detector's 128x128x3x3 head conv in cp3 form, rank 112 in 0.104 ms, rank 113 in
    0.193 ms, 1 thread, AVX2).
    """
    for block in (16, 8):
        if rank >= block:
            return rank // block * block
    return rank

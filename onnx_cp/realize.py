"""Turn CP factors of a Conv kernel into ONNX nodes: 1x1, kh x 1 depthwise, 1 x kw depthwise, 1x1.

Stage 1 has no bias and maps zero to zero, so the original padding can move after it:
the vertical stage pads and strides rows, the horizontal stage columns. A grouped Conv keeps
its groups in the 1x1 stages (group=G) around depthwise stages over G*R channels.
A kernel axis with a single tap needs no stage: its factor is a per-channel scale, folded
into stage 1, and its stride and pads move to the other spatial stage.
A Conv with a single input channel (a grayscale first layer) needs no stage 1 either: it would
only broadcast that channel to R scaled copies at the input resolution, so its scales go into
the first spatial stage, which reads the one channel directly (a plain Conv 1 -> R).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.conv import ConvSpec, cp4_stage_counts, has_reduce_stage
from onnx_cp.graph import NameAllocator

STAGES_CP4 = ("reduce", "vertical", "horizontal", "expand")
STAGES_CP3 = ("reduce", "spatial", "expand")
REALIZATIONS = ("cp4", "cp3")


@dataclass
class Realization:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]


def realize(kind: str, name: str, x: str, y: str, bias: str | None, spec: ConvSpec,
            group_factors: list[tuple[np.ndarray, ...]], dtype: np.dtype,
            names: NameAllocator) -> Realization:
    """Nodes computing ``y = Conv(x)`` from per-group factors (Ut, Us, Uy, Ux), each (dim, R).

    ``kind`` is cp4 (1x1, kh x 1, 1 x kw, 1x1) or cp3 (1x1, kh x kw depthwise with rank-one
    kernels, 1x1). ``name`` is the original node's name; new names derive from it.
    """
    if kind not in REALIZATIONS:
        raise ValueError(f"unknown realization {kind!r}; choose one of {REALIZATIONS}")
    ut = np.concatenate([f[0] for f in group_factors], axis=0)  # (T, R): group-major rows
    us = np.concatenate([f[1].T for f in group_factors], axis=0)  # (G*R, S/G)
    uy = np.concatenate([f[2].T for f in group_factors], axis=0)  # (G*R, kh)
    ux = np.concatenate([f[3].T for f in group_factors], axis=0)  # (G*R, kw)
    builder = _Builder(name, dtype, names)
    one_by_one = _grouped({"kernel_shape": [1, 1]}, spec.group)
    if kind == "cp3":
        spatial = uy[:, None, :, None] * ux[:, None, None, :]  # rank-one kh x kw kernel per channel
        attrs = {"kernel_shape": list(spec.kernel), "strides": list(spec.strides),
                 "dilations": list(spec.dilations), "group": us.shape[0], **_padding(spec, True, True)}
        if has_reduce_stage(spec):
            current = builder.conv("reduce", x, us[:, :, None, None], one_by_one)
        else:
            current, spatial, attrs["group"] = x, spatial * us[:, :, None, None], 1
        current = builder.conv("spatial", current, spatial, attrs)
    else:
        current = _cp4_middle(builder, x, us, uy, ux, spec)
    builder.conv("expand", current, ut[:, :, None, None], dict(one_by_one), y, (bias,) if bias else ())
    return builder.out


def _cp4_middle(builder: "_Builder", x: str, us, uy, ux, spec: ConvSpec) -> str:
    keep_v, keep_h = cp4_stage_counts(spec)
    if not keep_v:
        us = us * uy[:, :1]
    if not keep_h:
        us = us * ux[:, :1]
    reduce = has_reduce_stage(spec)
    current = x
    if reduce:
        current = builder.conv("reduce", x, us[:, :, None, None], _grouped({"kernel_shape": [1, 1]}, spec.group))
    kh, kw = spec.kernel
    spatial = [s for s, keep in (("vertical", keep_v), ("horizontal", keep_h)) if keep]
    h_owner, w_owner = spatial[0], spatial[-1]
    for stage in spatial:
        is_v = stage == "vertical"
        weight = uy[:, None, :, None] if is_v else ux[:, None, None, :]
        reads_input = stage == spatial[0] and not reduce
        if reads_input:
            weight = weight * us[:, :, None, None]  # the single input channel's scales
        attrs = {
            "kernel_shape": [kh if is_v else 1, 1 if is_v else kw],
            "strides": [spec.strides[0] if stage == h_owner else 1,
                        spec.strides[1] if stage == w_owner else 1],
            "dilations": [spec.dilations[0] if is_v else 1, 1 if is_v else spec.dilations[1]],
            "group": 1 if reads_input else us.shape[0],
            **_padding(spec, stage == h_owner, stage == w_owner),
        }
        current = builder.conv(stage, current, weight, attrs)
    return current


def _padding(spec: ConvSpec, rows: bool, cols: bool) -> dict:
    """The original padding restricted to the axes a stage owns."""
    if spec.auto_pad.startswith("SAME"):
        return {"auto_pad": spec.auto_pad}
    top, left, bottom, right = spec.pads
    return {"pads": [top * rows, left * cols, bottom * rows, right * cols]}


class _Builder:
    def __init__(self, name: str, dtype: np.dtype, names: NameAllocator):
        self.prefix, self.dtype, self.names = f"{name}/cp", dtype, names
        self.out = Realization([], [])

    def conv(self, stage: str, inp: str, weight: np.ndarray, attrs: dict, output: str | None = None,
             extra_inputs: tuple[str, ...] = ()) -> str:
        w_name = self.names.fresh(f"{self.prefix}/{stage}.weight")
        self.out.initializers.append(numpy_helper.from_array(weight.astype(self.dtype), w_name))
        result = output or self.names.fresh(f"{self.prefix}/{stage}_out")
        self.out.nodes.append(helper.make_node("Conv", [inp, w_name, *extra_inputs], [result],
                                               name=self.names.fresh(f"{self.prefix}/{stage}"), **attrs))
        return result


def _grouped(attrs: dict, group: int) -> dict:
    if group > 1:
        attrs["group"] = group
    return attrs

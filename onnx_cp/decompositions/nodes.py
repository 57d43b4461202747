"""ONNX nodes for realized decompositions: the node list + initializers of one replaced layer,
and a builder that names everything after the original node."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_cp.conv import ConvSpec
from onnx_cp.graph import NameAllocator


@dataclass
class Realization:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]


class NodeBuilder:
    """Appends nodes and initializers named ``{name}/{tag}/{stage}...`` to one Realization."""

    def __init__(self, name: str, tag: str, dtype: np.dtype, names: NameAllocator):
        self.prefix, self.dtype, self.names = f"{name}/{tag}", dtype, names
        self.out = Realization([], [])

    def constant(self, stage: str, value: np.ndarray, dtype=None) -> str:
        """An initializer named after ``stage`` (cast to the layer's dtype unless ``dtype``)."""
        w_name = self.names.fresh(f"{self.prefix}/{stage}")
        array = np.asarray(value).astype(dtype or self.dtype)
        self.out.initializers.append(numpy_helper.from_array(array, w_name))
        return w_name

    def node(self, op: str, stage: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        result = output or self.names.fresh(f"{self.prefix}/{stage}_out")
        self.out.nodes.append(helper.make_node(op, inputs, [result], name=self.names.fresh(f"{self.prefix}/{stage}"),
                                               **attrs))
        return result

    def conv(self, stage: str, inp: str, weight: np.ndarray, attrs: dict, output: str | None = None,
             extra_inputs: tuple[str, ...] = ()) -> str:
        w_name = self.constant(f"{stage}.weight", weight)
        return self.node("Conv", stage, [inp, w_name, *extra_inputs], output, **attrs)


def padding(spec: ConvSpec, rows: bool, cols: bool) -> dict:
    """The original padding restricted to the axes a stage owns (auto_pad is per axis already)."""
    if spec.auto_pad.startswith("SAME"):
        return {"auto_pad": spec.auto_pad}
    top, left, bottom, right = spec.pads
    return {"pads": [top * rows, left * cols, bottom * rows, right * cols]}


def grouped(attrs: dict, group: int) -> dict:
    if group > 1:
        attrs["group"] = group
    return attrs


def one_by_one(group: int) -> dict:
    return grouped({"kernel_shape": [1, 1]}, group)


def full_conv_attrs(spec: ConvSpec, group: int) -> dict:
    """The original kernel, strides, dilations and padding, with ``group`` groups."""
    return grouped({"kernel_shape": list(spec.kernel), "strides": list(spec.strides),
                    "dilations": list(spec.dilations), **padding(spec, True, True)}, group)


def stacked_1x1(blocks: list[np.ndarray]) -> np.ndarray:
    """Per-group (out, in) matrices as a grouped 1x1 Conv weight (G*out, in, 1, 1)."""
    return np.concatenate(blocks, axis=0)[:, :, None, None]

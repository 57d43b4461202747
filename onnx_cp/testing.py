"""Real graphs for tests and tools: the ONNX model-zoo graphs that ship inside the onnx wheel.

Their weights are ConstantOfShape fills (the wheel keeps only the structure), so
``materialize_zoo`` turns every such fill into a seeded random initializer.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

ZOO_NAMES = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
             "shufflenet", "squeezenet", "vgg19", "zfnet512")


def zoo_path(name: str) -> str:
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    path = os.path.join(folder, f"light_{name}.onnx")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is not in this onnx wheel; known: {ZOO_NAMES}")
    return path


def materialize_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """The zoo graph ``name`` with ConstantOfShape weights replaced by random initializers.

    Kernels get He-normal values; 1-D tensors (biases, batch-norm statistics) uniform [0.5, 1.5],
    which keeps variances positive.
    """
    model = onnx.load(zoo_path(name))
    rng = np.random.default_rng(seed)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    kept, fills = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            fills.append(numpy_helper.from_array(_random(rng, shape), node.output[0]))
        else:
            kept.append(node)
    used = {i for n in kept for i in n.input}
    del graph.node[:]
    graph.node.extend(kept)
    old = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(old + fills)
    inputs = [i for i in graph.input if i.name in used or i.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    if model.ir_version < 4:  # IR 3: initializers must be listed as inputs
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in fills)
    return model


def _random(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)

"""The damages of a budget selection: each candidate's error at its layer's output on the proxy's
inputs, and how much of a layer's error reaches the model's outputs (its sensitivity)."""
from __future__ import annotations

import numpy as np

from onnx_cp import decompositions
from onnx_cp.parallel_fit import past
from onnx_cp.progress import Progress
from onnx_cp.ranks import proxy
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem, weight_groups
from onnx_cp.splice import Replacement, splice


def measure_damages(problem: BudgetProblem, progress: Progress | None, deadline: float | None = None) -> bool:
    """Each candidate's error at its layer's output, and how much of a layer's error reaches the
    model's outputs: (output error / layer error)^2, each layer alone at its middle candidate (the
    layers reading one weight together: one run, one sensitivity). False where ``deadline`` (a
    ``time.perf_counter()``) passed first; the layers not reached then keep a sensitivity of 1."""
    model, auto, threads = problem.model, problem.auto, problem.threads
    problem.reference = proxy.run(model, problem.feeds, threads)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    dtype = auto[0].site.weight.value.dtype
    dtype = dtype if dtype in (np.float16, np.float32, np.float64) else np.float32
    got = proxy.capture(model, [t for l in auto for t in (l.site.node.input[0], l.site.node.output[0])],
                        problem.feeds, dtype, threads)
    groups = weight_groups(auto)
    steps = len(auto) + len(groups)
    for k, layer in enumerate(auto):
        if past(deadline):
            return False
        if progress:
            progress(f"damages: {layer.site.name} feature-map error", k, steps)
        node = layer.site.node
        weight = np.concatenate([np.asarray(g, dtype=np.float64) for g in layer.groups], axis=0)
        kernels = [_kernel(layer, j) for j in range(len(layer.ranks))]
        layer.errors = proxy.layer_errors(node, weight, kernels, got[node.input[0]], got[node.output[0]],
                                          opset, threads)
    for k, members in enumerate(groups):
        if past(deadline):
            return False
        layers = [auto[i] for i in members]
        if progress:
            progress(f"damages: {layers[0].site.name} sensitivity", len(auto) + k, steps)
        squared = sum(l.middle_error ** 2 for l in layers)
        if squared <= 0:
            continue
        variant = splice(model, [Replacement(l.site, decompositions.get(l.kind(l.middle)).forms[0], l.ranks[l.middle],
                                             l.factors(l.middle)) for l in layers])[0]
        out = proxy.output_error(proxy.run(variant, problem.feeds, threads), problem.reference)
        for layer in layers:
            layer.weight = out ** 2 / squared
    return True


def _kernel(layer: BudgetLayer, k: int) -> np.ndarray:
    """The weight candidate ``k`` rebuilds (groups stacked along the output channels; a Gemm's or
    MatMul's as its (out, in) matrix), by each decomposition's own ``kernels`` (BLAS products)."""
    return np.concatenate(decompositions.get(layer.kind(k)).kernels(layer.factors(k)), axis=0)

"""The damages of a budget selection: each candidate's error at its layer's output on the proxy's
inputs, and how much of a layer's error reaches the model's outputs (its sensitivity)."""
from __future__ import annotations

import numpy as np

from onnx_cp import decompositions
from onnx_cp.progress import Progress
from onnx_cp.ranks import proxy
from onnx_cp.ranks.problem import BudgetLayer, BudgetProblem
from onnx_cp.splice import Replacement, splice


def measure_damages(problem: BudgetProblem, progress: Progress | None) -> None:
    """Each candidate's error at its layer's output, and how much of a layer's error reaches the
    model's outputs: (output error / layer error)^2, each layer alone at its middle candidate."""
    model, auto, threads = problem.model, problem.auto, problem.threads
    problem.reference = proxy.run(model, problem.feeds, threads)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    dtype = auto[0].site.weight.value.dtype
    dtype = dtype if dtype in (np.float16, np.float32, np.float64) else np.float32
    got = proxy.capture(model, [t for l in auto for t in (l.site.node.input[0], l.site.node.output[0])],
                        problem.feeds, dtype, threads)
    for k, layer in enumerate(auto):
        if progress:
            progress(f"damages: {layer.site.name} feature-map error", k, 2 * len(auto))
        node = layer.site.node
        weight = np.concatenate([np.asarray(g, dtype=np.float64) for g in layer.groups], axis=0)
        kernels = [_kernel(layer, j) for j in range(len(layer.ranks))]
        layer.errors = proxy.layer_errors(node, weight, kernels, got[node.input[0]], got[node.output[0]],
                                          opset, threads)
    for k, layer in enumerate(auto):
        if progress:
            progress(f"damages: {layer.site.name} sensitivity", len(auto) + k, 2 * len(auto))
        mid = len(layer.ranks) // 2
        if layer.errors[mid] <= 0:
            continue
        form = decompositions.get(layer.kind(mid)).forms[0]
        variant = splice(model, [Replacement(layer.site, form, layer.ranks[mid], layer.factors(mid))])[0]
        out = proxy.output_error(proxy.run(variant, problem.feeds, threads), problem.reference)
        layer.weight = (out / layer.errors[mid]) ** 2


def _kernel(layer: BudgetLayer, k: int) -> np.ndarray:
    """The weight candidate ``k`` rebuilds (groups stacked along the output channels; a Gemm's or
    MatMul's as its (out, in) matrix), by each decomposition's own ``kernels`` (BLAS products)."""
    return np.concatenate(decompositions.get(layer.kind(k)).kernels(layer.factors(k)), axis=0)

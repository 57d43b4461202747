"""INT8 for a low-rank rewrite's chains: equalized (equalize.py), quantized by onnxruntime, their
stages' int8 weights rounded for their outputs (rounding.py).

Measured on a trained VGG-16 rewritten by CP at ``--target-speedup 3`` (docs/results/int8.md),
every node in int8: onnxruntime's quantization alone put the outputs 0.41 off the float
rewrite's on 16 held-back inputs (the link activations alone 0.27, the pointwise weights alone
0.31 and 0.12); equalized and rounded, 0.12. The kh x kw stages (a Tucker-2 core, an SVD's
first stage) gain from it too: on a VGG-16 Tucker-2 rewrite (tools/int8_stage_rounding.py,
docs/results/int8.md), every node in int8 was 0.0432 off the float rewrite's outputs on 16
held-back inputs and 0.0533 on 64 fresh ones with only the 1x1 stages rounded for their outputs,
0.0362 and 0.0430 with every stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from onnx_cp.quantize.chain_stats import chain_statistics
from onnx_cp.quantize.chains import Chains, find_chains
from onnx_cp.quantize.equalize import equalize_links, equalized_moments
from onnx_cp.quantize.ort_static import StaticRun
from onnx_cp.quantize.rounding import round_stages


class ChainQuantization:
    def __init__(self, chains: Chains, equalized: onnx.ModelProto, moments: dict[str, list[np.ndarray]],
                 run: StaticRun):
        self.chains, self.equalized, self.moments, self._run = chains, equalized, moments, run
        self._levels: dict[str, np.ndarray] = {}

    @classmethod
    def of(cls, model: onnx.ModelProto, feeds: list[dict], folder: Path,
           chains: Chains | None = None) -> "ChainQuantization | None":
        """``model``'s chains (``find_chains``, or those given) measured on ``feeds`` and equalized;
        None when it has no chains."""
        chains = find_chains(model) if chains is None else chains
        if not chains:
            return None
        stats = chain_statistics(model, feeds, chains)
        equalized, scales = equalize_links(model, chains.links, stats.low, stats.high)
        inputs = {node.name: node.input[0] for node in model.graph.node if node.name in stats.moments}
        return cls(chains, equalized, equalized_moments(stats.moments, inputs, scales), StaticRun(equalized, folder))

    def quantize(self, feeds: list[dict], nodes_to_exclude: Sequence[str], op_types: Sequence[str]) -> onnx.ModelProto:
        quantized = self._run.quantize(feeds, nodes_to_exclude, op_types)
        round_stages(quantized, self.equalized, self.chains.stages, self.moments, self._levels)
        return quantized

    def describe(self) -> str:
        return (f"{len(self.chains.links)} link tensor(s) equalized, {len(self.moments)} stage(s) "
                "rounded by GPTQ")

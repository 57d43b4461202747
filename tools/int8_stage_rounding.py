"""How a low-rank model's chains take INT8, by how their stages' int8 weights are rounded: the
output error of onnxruntime's own quantization, of the chains equalized with only their 1x1
stages rounded by GPTQ, and with every stage rounded (the kh x kw ones too: a Tucker-2 core, an
SVD's first stage, CP's depthwise stages), which is what ``quantize_int8(..., chain_aware=True)``
writes.

    python tools/int8_stage_rounding.py lowrank.onnx --original assets/vgg16_240.onnx --calib vgg_calib.npy

``lowrank.onnx`` is a float low-rank rewrite (an ``onnx-cp rewrite`` output without
``--quantize``). Every way is calibrated on the first ``--calib-count`` inputs of ``--calib``.
Each error is the relative L2 error over every float output on the held-back inputs (``--calib``
after the first ``--calib-count``) and on ``--fresh`` smooth images the rewrite never saw (seed
``--seed``, drawn as tools/bench_int8.py draws them), against the float low-rank model and, with
``--original``, against the original (INT8 alone's row then gives onnxruntime's INT8 of the
original beside them).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_int8 import smooth_images  # noqa: E402
from onnx_cp.machine import describe_machine  # noqa: E402
from onnx_cp.model_io import load_model  # noqa: E402
from onnx_cp.quantize import OP_TYPES, calibration_feeds, int8_error, quantize_int8  # noqa: E402
from onnx_cp.quantize.chain_quant import ChainQuantization  # noqa: E402
from onnx_cp.quantize.chains import find_chains  # noqa: E402
from onnx_cp.quantize.keep_float import keep_float  # noqa: E402
from onnx_cp.quantize.opset import with_min_opset  # noqa: E402


def chains_quantized(model, feeds: list[dict], folder: Path, pointwise_only: bool):
    """``model`` with its chains equalized and quantized, every stage rounded by GPTQ or only the 1x1 ones."""
    chains = find_chains(model)
    if pointwise_only:
        dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
        nodes = {node.name: node for node in model.graph.node}
        chains = dataclasses.replace(chains, stages=tuple(
            name for name in chains.stages if all(k == 1 for k in dims[nodes[name].input[1]][2:])))
    quantized = ChainQuantization.of(model, feeds, folder, chains).quantize(feeds, (), OP_TYPES)
    keep_float(quantized)
    return quantized


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a float low-rank rewrite")
    parser.add_argument("--original", type=Path, help="the model it was rewritten from")
    parser.add_argument("--calib", type=Path, required=True, help=".npy of inputs, batch 1 each")
    parser.add_argument("--calib-count", type=int, default=64, help="inputs every way is calibrated on")
    parser.add_argument("--fresh", type=int, default=64, help="smooth images the rewrite never saw")
    parser.add_argument("--seed", type=int, default=1, help="their seed")
    args = parser.parse_args(argv)

    model = with_min_opset(load_model(args.model))
    if not find_chains(model):
        parser.error(f"{args.model} has no low-rank chains (no onnx_cp metadata entry naming them)")
    x = np.load(args.calib).astype(np.float32)
    calib = x[:args.calib_count]
    sets = {f"held back ({len(x) - args.calib_count})": x[args.calib_count:],
            f"fresh ({args.fresh}, seed {args.seed})": smooth_images(args.fresh, (1, *x.shape[-3:]), args.seed)}
    feeds = calibration_feeds(model, calib)
    with tempfile.TemporaryDirectory(prefix="int8-rounding-") as tmp:
        ways = {"onnxruntime's own": quantize_int8(model, calib),
                "equalized, 1x1 stages rounded": chains_quantized(model, feeds, Path(tmp) / "pointwise", True),
                "equalized, every stage rounded": chains_quantized(model, feeds, Path(tmp) / "every", False)}
    references = {"low-rank float": model}
    if args.original:
        original = load_model(args.original)
        references["original"] = original
        ways = {"INT8 alone (the original)": quantize_int8(original, calib), **ways}
    print(f"machine: {describe_machine().label}")
    columns = [f"{s} vs {r}" for r in references for s in sets]
    print("| INT8 | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, quantized in ways.items():
        cells = []
        for ref_name, reference in references.items():
            for inputs in sets.values():
                alone = name.startswith("INT8 alone")
                if alone and ref_name != "original":
                    cells.append("-")
                else:
                    cells.append(f"{int8_error(reference, quantized, inputs):.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

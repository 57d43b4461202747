"""Block recovery: a layer's CP chain trained to reproduce the *next* Conv's output.

A layer's own output error treats every channel and position alike, but what the model
needs is what the next layer makes of it: when the Conv's activation feeds exactly one plain
Conv N (constant weight, no padding, dilation 1, group 1), the chain (and its bias) is trained
so that act_N(N(act(chain(.)))) matches the original model's output of N after its activation,
N itself fixed (block reconstruction, as in BRECQ). Each sample is one output pixel of N and
the region of the layer's input behind N's whole receptive field; the original outputs of N
come from the original model, the regions from the model whose earlier layers are already
recovered. The result is kept only when it lowers N's output error on held-back samples.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_cp.calibrate.activations import stream
from onnx_cp.calibrate.follow import Activation, following
from onnx_cp.calibrate.patches import effective_pads, sample_positions, pixels
from onnx_cp.conv import ConvSpec, conv_spec
from onnx_cp.graph import GraphIndex

# Floats of input regions one block may hold (128 MiB in float32).
REGION_FLOATS = 1 << 25


@dataclass(frozen=True)
class Block:
    """The Conv that reads the layer's activation, its spec, weight, bias and activation."""

    node: onnx.NodeProto
    spec: ConvSpec
    weight: np.ndarray
    bias: np.ndarray | None
    act: Activation


def next_block(index: GraphIndex, spec: ConvSpec, act: Activation) -> Block | None:
    """The block after a layer (``spec``, activation ``act``), or None when it has none that
    the rules above accept."""
    if spec.group != 1 or spec.auto_pad.startswith("SAME") or act.output in index.graph_outputs:
        return None
    users = index.consumers.get(act.output, [])
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].domain not in ("", "ai.onnx"):
        return None
    node = users[0]
    if len(node.input) < 2 or node.input[0] != act.output:
        return None
    weight = index.constant(node.input[1])
    if isinstance(weight, str):
        return None
    w = np.asarray(weight.value, dtype=np.float64)
    nspec = conv_spec(node, w.shape)
    if isinstance(nspec, str) or nspec.group != 1 or any(nspec.pads) or nspec.auto_pad.startswith("SAME") \
            or nspec.dilations != (1, 1):
        return None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        value = index.constant(node.input[2])
        if isinstance(value, str):
            return None
        bias = np.asarray(value.value, dtype=np.float64)
    return Block(node, nspec, w, bias, following(index, node))


def region_size(spec: ConvSpec, block: Block) -> tuple[int, int]:
    """Rows and columns of the layer's input behind one output pixel of the block's Conv."""
    return tuple((block.spec.kernel[a] - 1) * spec.strides[a] + (spec.kernel[a] - 1) * spec.dilations[a] + 1
                 for a in range(2))


def gather(original: onnx.ModelProto, prefix: onnx.ModelProto, layer_input: str, spec: ConvSpec, block: Block,
           in_hw: tuple[int, int], out_hw: tuple[int, int], block_hw: tuple[int, int], x: np.ndarray, train: int,
           count: int, seed: int, threads: int):
    """(regions (M, C, hr, wr), targets (M, T_N) before N's activation, held-back rows):
    regions of the layer's input read from ``prefix``, N's outputs from ``original``."""
    hr, wr = region_size(spec, block)
    count = max(64, min(count, REGION_FLOATS // (spec.in_channels * hr * wr)))
    rng = np.random.default_rng([seed, 7919])
    fit = sample_positions(rng, range(train), block_hw, count)
    hold = sample_positions(rng, range(train, len(x)), block_hw, max(16, count // 4)) if len(x) > train else None
    pos = fit if hold is None else type(fit)(*(np.concatenate([getattr(fit, f), getattr(hold, f)])
                                               for f in ("sample", "row", "col")))
    held = np.arange(len(fit), len(pos)) if hold is not None else np.zeros(0, dtype=np.int64)
    top, left, bottom, right = effective_pads(spec, in_hw, out_hw)
    regions = []
    for start, values in stream(prefix, [layer_input], x, threads=threads):
        maps = np.pad(values[layer_input], ((0, 0), (0, 0), (top, bottom), (left, right)))
        pick = pos.of_samples(start, start + len(maps))
        rows = (pos.row[pick] * block.spec.strides[0] * spec.strides[0])[:, None] + np.arange(hr)
        cols = (pos.col[pick] * block.spec.strides[1] * spec.strides[1])[:, None] + np.arange(wr)
        n = pos.sample[pick] - start
        regions.append(maps[n[:, None, None], :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2))
    targets = [pixels(values[block.node.output[0]], start, pos)
               for start, values in stream(original, [block.node.output[0]], x, threads=threads)]
    return np.ascontiguousarray(np.concatenate(regions), dtype=np.float32), np.concatenate(targets), held


def _forward(torch, regions, factors, bias, spec: ConvSpec, act: Activation, block: Block, wn, bn):
    ut, us, uy, ux = factors
    z = torch.einsum("bchw,cr->brhw", regions, us)
    z = torch.nn.functional.conv2d(z, uy.T[:, None, :, None], stride=(spec.strides[0], 1),
                                   dilation=(spec.dilations[0], 1), groups=uy.shape[1])
    z = torch.nn.functional.conv2d(z, ux.T[:, None, None, :], stride=(1, spec.strides[1]),
                                   dilation=(1, spec.dilations[1]), groups=ux.shape[1])
    y = torch.einsum("brhw,tr->bhwt", z, ut) + bias  # (B, kh_N, kw_N, T)
    a = act.torch(y)
    out = torch.einsum("bhwc,nchw->bn", a, wn)
    return block.act.torch(out if bn is None else out + bn)


def refine(regions: np.ndarray, targets: np.ndarray, held: np.ndarray, factors, bias: np.ndarray, spec: ConvSpec,
           act: Activation, block: Block, steps: int, lr: float, batch: int, max_time: float | None, seed: int,
           threads: int):
    """(factors, bias, error before, error after, steps) of the chain trained on the block's
    output; errors relative, on the held-back rows, after N's activation."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    keep = np.setdiff1d(np.arange(len(targets)), held)
    if not len(held):
        held = keep
    data = torch.from_numpy(regions)
    want = block.act.torch(torch.from_numpy(targets.astype(np.float32)))
    wn = torch.from_numpy(block.weight.astype(np.float32))
    bn = None if block.bias is None else torch.from_numpy(block.bias.astype(np.float32))
    params = [torch.tensor(np.asarray(f), dtype=torch.float32, requires_grad=True) for f in factors]
    b = torch.tensor(bias, dtype=torch.float32, requires_grad=True)
    hold_idx, keep_idx = torch.from_numpy(held), torch.from_numpy(keep)

    def error(ps, bb) -> float:
        with torch.no_grad():
            got = torch.cat([_forward(torch, data[hold_idx[i:i + 512]], ps, bb, spec, act, block, wn, bn)
                             for i in range(0, len(hold_idx), 512)])
            ref = want[hold_idx]
            return float((got - ref).norm() / ref.norm().clamp_min(1e-12))

    before = error(params, b)
    scale = float(want[keep_idx].pow(2).mean()) or 1.0
    rms = [float(t.detach().pow(2).mean().sqrt()) or 1.0 for t in params]
    rms.append(float(b.detach().abs().mean()) or 1.0)
    optimizer = torch.optim.Adam([{"params": [t], "lr": lr * r} for t, r in zip(params + [b], rms)])
    base = [g["lr"] for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(seed)
    size = min(batch, len(keep_idx))
    done = 0
    for step in range(steps):
        if max_time is not None and time.perf_counter() - start > max_time:
            break
        pick = keep_idx[torch.randint(len(keep_idx), (size,), generator=gen)]
        loss = (_forward(torch, data[pick], params, b, spec, act, block, wn, bn) - want[pick]).pow(2).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
        done = step + 1
    after = error(params, b)
    trained = tuple(t.detach().double().numpy() for t in params)
    return trained, b.detach().double().numpy(), before, after, done

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
class Stage:
    """One fixed Conv of the block: its node, spec, weight, bias and the activation after it."""

    node: onnx.NodeProto
    spec: ConvSpec
    weight: np.ndarray
    bias: np.ndarray | None
    act: Activation


@dataclass(frozen=True)
class Block:
    """The Convs after a layer, each reading the previous one's activation only."""

    stages: tuple[Stage, ...]

    @property
    def node(self) -> onnx.NodeProto:
        """The last Conv: its output is the block's target."""
        return self.stages[-1].node

    @property
    def act(self) -> Activation:
        return self.stages[-1].act

    def out_hw(self, layer_hw: tuple[int, int]) -> tuple[int, int]:
        """The last Conv's output size for the layer's output size ``layer_hw``."""
        hw = layer_hw
        for st in self.stages:
            hw = tuple((hw[a] - st.spec.kernel[a]) // st.spec.strides[a] + 1 for a in range(2))
        return hw


def next_block(index: GraphIndex, spec: ConvSpec, act: Activation, depth: int = 2) -> Block | None:
    """The block of up to ``depth`` Convs after a layer (``spec``, activation ``act``), or None
    when not even one follows that the rules above accept."""
    if spec.group != 1 or spec.auto_pad.startswith("SAME"):
        return None
    stages: list[Stage] = []
    while len(stages) < depth:
        stage = _stage(index, act)
        if stage is None:
            break
        stages.append(stage)
        act = stage.act
    return Block(tuple(stages)) if stages else None


def _stage(index: GraphIndex, act: Activation) -> Stage | None:
    if act.output in index.graph_outputs:
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
    return Stage(node, nspec, w, bias, following(index, node))


def region_size(spec: ConvSpec, block: Block) -> tuple[int, int]:
    """Rows and columns of the layer's input behind one output pixel of the block's last Conv."""
    size = [1, 1]
    for st in reversed(block.stages):
        size = [(size[a] - 1) * st.spec.strides[a] + st.spec.kernel[a] for a in range(2)]
    return tuple((size[a] - 1) * spec.strides[a] + (spec.kernel[a] - 1) * spec.dilations[a] + 1 for a in range(2))


def _stride(spec: ConvSpec, block: Block, axis: int) -> int:
    """Input pixels of the layer between neighbouring output pixels of the block."""
    return int(np.prod([st.spec.strides[axis] for st in block.stages])) * spec.strides[axis]


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
        rows = (pos.row[pick] * _stride(spec, block, 0))[:, None] + np.arange(hr)
        cols = (pos.col[pick] * _stride(spec, block, 1))[:, None] + np.arange(wr)
        n = pos.sample[pick] - start
        regions.append(maps[n[:, None, None], :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2))
    targets = [pixels(values[block.node.output[0]], start, pos)
               for start, values in stream(original, [block.node.output[0]], x, threads=threads)]
    return np.ascontiguousarray(np.concatenate(regions), dtype=np.float32), np.concatenate(targets), held


def _channels_last(act: Activation, y):
    return act.torch(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _forward(torch, regions, factors, bias, spec: ConvSpec, act: Activation, stages):
    """The block's last output (B, T) for regions of the layer's input: the chain, its
    activation, then every fixed Conv and its activation."""
    ut, us, uy, ux = factors
    conv2d = torch.nn.functional.conv2d
    z = torch.einsum("bchw,cr->brhw", regions, us)
    z = conv2d(z, uy.T[:, None, :, None], stride=(spec.strides[0], 1), dilation=(spec.dilations[0], 1),
               groups=uy.shape[1])
    z = conv2d(z, ux.T[:, None, None, :], stride=(1, spec.strides[1]), dilation=(1, spec.dilations[1]),
               groups=ux.shape[1])
    y = _channels_last(act, torch.einsum("brhw,tr->bthw", z, ut) + bias[None, :, None, None])
    for weight, b, stage in stages:
        y = _channels_last(stage.act, conv2d(y, weight, b, stride=stage.spec.strides))
    return y.reshape(len(y), -1)


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
    stages = [(torch.from_numpy(st.weight.astype(np.float32)),
               None if st.bias is None else torch.from_numpy(st.bias.astype(np.float32)), st) for st in block.stages]
    params = [torch.tensor(np.asarray(f), dtype=torch.float32, requires_grad=True) for f in factors]
    b = torch.tensor(bias, dtype=torch.float32, requires_grad=True)
    hold_idx, keep_idx = torch.from_numpy(held), torch.from_numpy(keep)

    def error(ps, bb) -> float:
        with torch.no_grad():
            got = torch.cat([_forward(torch, data[hold_idx[i:i + 512]], ps, bb, spec, act, stages)
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
        loss = (_forward(torch, data[pick], params, b, spec, act, stages) - want[pick]).pow(2).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
        done = step + 1
    after = error(params, b)
    trained = tuple(t.detach().double().numpy() for t in params)
    return trained, b.detach().double().numpy(), before, after, done

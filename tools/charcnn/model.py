"""The 36-class character CNN, after Jaderberg, Vedaldi and Zisserman (ECCV 2014), and its export.

    24x24x1 -> conv 9x9, 48 ch, maxout 2 -> 24 maps @ 16x16
            -> conv 9x9, 128 ch, maxout 2 -> 64 maps @ 8x8
            -> conv 8x8, 48 ch, maxout 2 -> 24 maps @ 1x1
            -> conv 1x1, 144 ch, maxout 4 -> 36 logits

Four convolutions with maxout, large kernels, no padding, no pooling and no fully connected
layer; the last conv's maxout gives the logits. Jaderberg's widths (48/64/128 maps) are halved
or more so that the ONNX file stays under 2 MB (float32); conv2 still holds 93% of the
multiply-adds, as conv2 and conv3 did in the original. Training uses batch normalization
before each maxout; torch's exporter folds it into the convolutions (eval mode), so the ONNX
graph is Conv, Split, Max only.

Maxout over k groups takes the elementwise max of the k channel blocks (constant slices along
channels: Slice + Max in ONNX, which onnx2torch converts back for fine-tuning).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

INPUT, OUTPUT = "input", "logits"


class Maxout(nn.Module):
    def __init__(self, maps: int, groups: int):
        super().__init__()
        self.maps, self.groups = maps, groups

    def forward(self, x):
        # constant slice bounds (not torch.chunk) so the exported Slices need no Shape arithmetic
        out = x[:, :self.maps]
        for g in range(1, self.groups):
            out = torch.maximum(out, x[:, g * self.maps:(g + 1) * self.maps])
        return out


class CharCNN(nn.Module):
    # (in maps, out maps, kernel, maxout groups)
    LAYERS = ((1, 24, 9, 2), (24, 64, 9, 2), (64, 24, 8, 2), (24, 36, 1, 4))

    def __init__(self, batchnorm: bool = True):
        super().__init__()
        blocks = []
        for cin, maps, k, g in self.LAYERS:
            blocks.append(nn.Conv2d(cin, maps * g, k, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm2d(maps * g))
            blocks.append(Maxout(maps, g))
        self.features = nn.Sequential(*blocks)

    def forward(self, x):
        return torch.flatten(self.features(x), 1)


def export(model: nn.Module, path: Path, opset: int = 17) -> None:
    """ONNX via the TorchScript exporter (BatchNorm folded into Conv); dynamic batch."""
    model.eval()
    with warnings.catch_warnings():  # the "legacy TorchScript-based exporter" warning: chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 24, 24), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)

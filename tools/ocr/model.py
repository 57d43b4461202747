"""A CRNN text-line recognizer (Shi, Bai and Yao, TPAMI 2017, narrower) and its ONNX export.

    1 x 32 x 128 grey -> conv 3x3 1->32,    SiLU, max-pool 2x2 -> 32 @ 16 x 64
                      -> conv 3x3 32->64,   SiLU, max-pool 2x2 -> 64 @ 8 x 32
                      -> conv 3x3 64->128,  SiLU, max-pool 2x1 -> 128 @ 4 x 32
                      -> conv 3x3 128->128, SiLU
                      -> conv 3x3 128->256, SiLU, max-pool 2x1 -> 256 @ 2 x 32
                      -> conv 3x3 256->256, SiLU, max-pool 2x1 -> 256 @ 1 x 32
                      -> 32 time steps x 256 features -> bidirectional LSTM, hidden 128,
                         plus its input (a residual: the CNN's own per-step features)
                      -> Linear 256 -> 37 per step -> log-softmax: (T=32, N, 37)

The residual around the LSTM gives the classifier the CNN's own per-step features, so the
per-column targets of training (tools/ocr/train.py) reach the CNN directly.

Batch normalization follows each conv in training; the exporter folds it into the Convs, so
the ONNX graph is Conv, Sigmoid/Mul (SiLU), MaxPool, then Squeeze/Transpose, LSTM, MatMul.
Class 0 is the CTC blank; classes 1-36 are ``CHARSET``. The six 3x3 Convs hold 91% of the
multiply-adds (133.3 M of 146.2 M per line; the LSTM 12.6 M), which is what onnx-cp rewrites.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NUM_CLASSES = len(CHARSET) + 1  # + the CTC blank, index 0
HEIGHT, WIDTH = 32, 128
INPUT, OUTPUT = "input", "log_probs"

# (in channels, out channels, max-pool kernel after the activation or None)
CONVS = ((1, 32, (2, 2)), (32, 64, (2, 2)), (64, 128, (2, 1)), (128, 128, None), (128, 256, (2, 1)),
         (256, 256, (2, 1)))


class CRNN(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, pool in CONVS:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]
            if pool:
                layers.append(nn.MaxPool2d(pool))
        self.features = nn.Sequential(*layers)
        self.rnn = nn.LSTM(CONVS[-1][1], hidden, bidirectional=True)  # 2 * hidden == the CNN's channels
        self.head = nn.Linear(2 * hidden, NUM_CLASSES)

    def forward(self, x):
        return self.classify(self.features(x))

    def classify(self, features):
        """N x C x 1 x T CNN features -> T x N x classes log-probabilities."""
        seq = features.squeeze(2).permute(2, 0, 1)  # T x N x C
        return torch.log_softmax(self.head(self.rnn(seq)[0] + seq), dim=-1)


def export(model: nn.Module, path: Path, opset: int = 17) -> None:
    """ONNX via the TorchScript exporter (BatchNorm folded); dynamic batch, static height and width."""
    model.eval()
    with warnings.catch_warnings():  # the legacy-exporter and LSTM batch-size warnings: expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, HEIGHT, WIDTH), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {1: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)

"""CNNs exported by torch's TorchScript-based and dynamo-based exporters rewrite exactly.

The network's kernels are set to exact CP tensors before export; batch norm scales output
channels, which keeps the rank, so a rewrite at that rank must reproduce the outputs.
"""
import io

import numpy as np
import onnx
import pytest

from builders import cp_kernel, relative_difference, run
from onnx_cp import RewriteConfig, rewrite_with_report

torch = pytest.importorskip("torch")
RANK = 3


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, (3, 5), padding=(1, 2), dilation=(1, 1), bias=False), nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
            nn.Conv2d(24, 32, (1, 3), stride=(1, 2), padding=(0, 1)), nn.ReLU(),
            nn.Conv2d(32, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)

    @torch.no_grad()
    def make_exact(self, rank, seed=0):
        rng = np.random.default_rng(seed)
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):
                per = m.out_channels // m.groups
                blocks = [cp_kernel(rng, (per, m.in_channels // m.groups, *m.kernel_size), rank)[0]
                          for _ in range(m.groups)]
                w = np.concatenate(blocks) / np.sqrt(m.weight[0].numel())
                m.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        return self


def export(dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = SmallNet().make_exact(RANK).eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    if dynamo:
        program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"],
                                    output_names=["logits"])
        return program.model_proto
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamic_axes={"input": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_exported_cnn_rewrites_exactly(dynamo):
    model = export(dynamo)
    result = rewrite_with_report(model, RewriteConfig(ranks=(RANK,), cap_rank=False, realize="cp4",
                                                      input_shapes={"input": (2, 3, 32, 32)}
                                                      if not dynamo else {}))
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    rewritten = {l.node: l for l in result.report.rewritten}
    assert len(rewritten) == 4, [(l.node, l.status, l.reason) for l in result.report.layers]
    assert max(l.rel_error for l in rewritten.values()) < 1e-6
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert relative_difference(run(model, {"input": x})[0], run(out, {"input": x})[0]) < 1e-4

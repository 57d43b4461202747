"""Real graphs: the model-zoo graphs inside the onnx wheel, CNNs exported by torch's two
exporters, and a pretrained detector from a PyPI wheel."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from builders import run
from onnx_cp import RewriteConfig, rewrite_with_report
from onnx_cp.testing import materialize_zoo

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _random_feeds(model, shapes, seed=0):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {i.name: rng.standard_normal(shapes[i.name]).astype(np.float32)
            for i in model.graph.input if i.name not in inits}


def _input_shapes(model, default=None):
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
        shapes[i.name] = tuple(d or default[k] for k, d in enumerate(dims)) if default else tuple(dims)
    return shapes


def test_zoo_alexnet_conv2_group2_rewrites_at_rank_64():
    model = materialize_zoo("bvlc_alexnet")
    result = rewrite_with_report(model, RewriteConfig(ranks=(64,), layers=("conv2*",), max_iter=50))
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    rewritten = result.report.rewritten
    assert [l.node for l in rewritten] == ["n4"] and rewritten[0].group == 2
    assert rewritten[0].macs_after < rewritten[0].macs_before
    feeds = _random_feeds(model, _input_shapes(model))
    expected, actual = run(model, feeds)[0], run(out, feeds)[0]
    assert actual.shape == expected.shape and np.all(np.isfinite(actual))


@pytest.mark.parametrize("name", ["resnet50", "vgg19", "inception_v1", "zfnet512", "squeezenet",
                                  "densenet121"])
def test_zoo_graphs_rewrite_and_run(name):
    model = materialize_zoo(name)
    config = RewriteConfig(ranks=(8,), max_iter=5)
    result = rewrite_with_report(model, config)
    out = result.model
    assert result.report.rewritten, "every zoo CNN has Convs larger than 1x1"
    onnx.checker.check_model(out, full_check=True)
    feeds = _random_feeds(model, _input_shapes(model))
    expected, actual = run(model, feeds)[0], run(out, feeds)[0]
    assert actual.shape == expected.shape and np.all(np.isfinite(actual))


def _nudenet():
    path = ASSETS / "nudenet_320n.onnx"
    if not path.exists():
        pytest.fail(f"{path} is missing; run: python tools/fetch_assets.py")
    return onnx.load(path)


def test_pretrained_detector_rewrites_at_rank_32_and_runs():
    model = _nudenet()
    shapes = {"images": (1, 3, 320, 320)}
    result = rewrite_with_report(model, RewriteConfig(ranks=(32,), max_iter=30, input_shapes=shapes))
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    rewritten = result.report.rewritten
    assert len(rewritten) >= 20
    assert all(l.rel_error < 1.0 for l in rewritten)
    feeds = _random_feeds(model, shapes)
    feeds["images"] = np.abs(feeds["images"]) / 4  # image-like values in [0, 1)
    expected, actual = run(model, feeds)[0], run(out, feeds)[0]
    assert actual.shape == expected.shape and np.all(np.isfinite(actual))
    # The dynamic input survives: another resolution still runs.
    bigger = {"images": np.full((2, 3, 256, 384), 0.5, np.float32)}
    assert run(out, bigger)[0].shape[0] == 2


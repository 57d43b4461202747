"""The four-conv form computes exactly the original Conv when the kernel is an exact CP tensor.

An oracle fitter hands the rewriter the true factors, so these tests judge the realization
(strides, pads, auto_pad, dilations, groups, bias, folding of 1-tap axes) and nothing else.
"""
import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import conv_model, grouped_cp_kernel, oracle_fitter, relative_difference, run
from onnx_cp import RewriteConfig, rewrite_with_report


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if kh == kw == 1:
        kw = draw(st.integers(2, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    pads = [draw(st.integers(0, 2)) for _ in range(4)] if auto_pad == "NOTSET" else [0] * 4
    if auto_pad.startswith("SAME"):
        dh = dw = 1  # onnxruntime runs no dilated Conv with SAME padding, original or not
    group = draw(st.sampled_from([1, 1, 2, 3]))
    # One input channel (a grayscale first layer) only without groups: grouped, it is depthwise.
    in_pg, out_pg = draw(st.integers(1 if group == 1 else 2, 4)), draw(st.integers(1, 4))
    # Input large enough for at least one output pixel in every padding mode.
    h = (kh - 1) * dh + 1 + draw(st.integers(0, 6))
    w = (kw - 1) * dw + 1 + draw(st.integers(0, 6))
    return dict(kernel=(kh, kw), dilations=[dh, dw], strides=[sh, sw], auto_pad=auto_pad, pads=pads,
                group=group, in_pg=in_pg, out_pg=out_pg, hw=(h, w), batch=draw(st.integers(1, 3)),
                bias=draw(st.booleans()), rank=draw(st.integers(1, 3)),
                explicit_kernel_shape=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                realize=draw(st.sampled_from(["cp4", "cp3"])))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_exact_rank_kernels_are_reproduced(cfg):
    rng = np.random.default_rng(cfg["seed"])
    kh, kw = cfg["kernel"]
    g = cfg["group"]
    weight, factors = grouped_cp_kernel(rng, cfg["out_pg"] * g, cfg["in_pg"], kh, kw, g, cfg["rank"])
    weight = weight.astype(np.float32)
    bias = rng.standard_normal(weight.shape[0]).astype(np.float32) if cfg["bias"] else None
    attrs = dict(strides=cfg["strides"], dilations=cfg["dilations"], group=g)
    if cfg["auto_pad"] == "NOTSET":
        attrs["pads"] = cfg["pads"]
    else:
        attrs["auto_pad"] = cfg["auto_pad"]
    if cfg["explicit_kernel_shape"]:
        attrs["kernel_shape"] = [kh, kw]
    x_shape = (cfg["batch"], cfg["in_pg"] * g, *cfg["hw"])
    model = conv_model(x_shape, weight, bias, **attrs)

    result = rewrite_with_report(model, RewriteConfig(ranks=(cfg["rank"],), cap_rank=False,
                                                             realize=cfg["realize"]),
                                 fitter=oracle_fitter(factors))

    onnx.checker.check_model(result.model, full_check=True)
    assert [l.status for l in result.report.layers] == ["rewritten"]
    stages = 3 if cfg["realize"] == "cp3" else 4 - (1 in (kh, kw))
    assert len(result.model.graph.node) == stages - (cfg["in_pg"] * g == 1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected, = run(model, {"x": x})
    actual, = run(result.model, {"x": x})
    assert actual.shape == expected.shape
    assert relative_difference(expected, actual) < 1e-5


def test_one_tap_axes_need_no_depthwise_stage():
    rng = np.random.default_rng(1)
    weight, factors = grouped_cp_kernel(rng, 6, 4, 1, 5, 1, 2)
    model = conv_model((1, 4, 7, 9), weight.astype(np.float32), pads=[0, 2, 0, 2], strides=[2, 1])
    result = rewrite_with_report(model, RewriteConfig(ranks=(2,), cap_rank=False, realize="cp4"),
                                 fitter=oracle_fitter(factors))
    assert [n.name for n in result.model.graph.node] == ["conv/cp/reduce", "conv/cp/horizontal",
                                                         "conv/cp/expand"]


def test_single_input_channel_needs_no_reduce_stage():
    rng = np.random.default_rng(3)
    weight, factors = grouped_cp_kernel(rng, 6, 1, 5, 5, 1, 3)
    model = conv_model((2, 1, 9, 9), weight.astype(np.float32), pads=[2, 2, 2, 2])
    x = rng.standard_normal((2, 1, 9, 9)).astype(np.float32)
    expected, = run(model, {"x": x})
    for kind, names in (("cp4", ["conv/cp/vertical", "conv/cp/horizontal", "conv/cp/expand"]),
                        ("cp3", ["conv/cp/spatial", "conv/cp/expand"])):
        result = rewrite_with_report(model, RewriteConfig(ranks=(3,), cap_rank=False, realize=kind),
                                     fitter=oracle_fitter([[u.copy() for u in f] for f in factors]))
        assert [n.name for n in result.model.graph.node] == names
        first = result.model.graph.node[0]
        assert [a.i for a in first.attribute if a.name == "group"] == [1]  # a plain Conv 1 -> R
        actual, = run(result.model, {"x": x})
        assert relative_difference(expected, actual) < 1e-5


def test_grouped_conv_keeps_groups_instead_of_a_block_diagonal_kernel():
    rng = np.random.default_rng(2)
    weight, factors = grouped_cp_kernel(rng, 8, 3, 3, 3, 4, 2)
    model = conv_model((1, 12, 6, 6), weight.astype(np.float32), group=4, pads=[1, 1, 1, 1])
    result = rewrite_with_report(model, RewriteConfig(ranks=(2,), cap_rank=False, realize="cp4"),
                                 fitter=oracle_fitter(factors))
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert shapes["conv/cp/reduce.weight"] == (8, 3, 1, 1)  # G*R outputs, S/G inputs each
    assert shapes["conv/cp/vertical.weight"] == (8, 1, 3, 1)
    assert shapes["conv/cp/expand.weight"] == (8, 2, 1, 1)  # T outputs, R inputs each
    groups = {n.name: [a.i for a in n.attribute if a.name == "group"] for n in result.model.graph.node}
    assert groups["conv/cp/reduce"] == [4] and groups["conv/cp/expand"] == [4]
    assert groups["conv/cp/vertical"] == [8]

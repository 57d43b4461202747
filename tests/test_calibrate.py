"""--calib: patches, statistics, data-aware fits, recovery and the rewrite with them.

Tiny models built in code, seeded data, onnxruntime as the judge.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import conv_model, cp_kernel, run
from onnx_cp.calibrate.follow import following
from onnx_cp.calibrate.layerwise import LR_RANK, rank_scaled_lr, set_biases, waves
from onnx_cp.calibrate.patches import conv_outputs, extract, output_hw, pixels, sample_positions
from onnx_cp import decompositions
from onnx_cp.calibrate.recovery import Pairs, RecoveryOptions, output_error, recover
from onnx_cp.calibrate.statistics import MomentAccumulator
from onnx_cp.decompositions.cp_fit import fit_weighted, group_weights
from onnx_cp.config import RewriteConfig
from onnx_cp.conv import conv_spec
from onnx_cp.decompositions.cp_solver import FitOptions
from onnx_cp.errors import OnnxCpError
from onnx_cp.graph import GraphIndex
from onnx_cp.decompositions.cp_fit import fit_layer, solver_fitter
from onnx_cp.rewrite import rewrite_with_report


def correlated(rng, n, channels, size, mixing=3):
    """Inputs whose channels are mixtures of a few smooth sources (strongly correlated)."""
    sources = rng.standard_normal((n, mixing, size + 2, size + 2))
    smooth = (sources[:, :, :-2, :-2] + sources[:, :, 1:-1, 1:-1] + sources[:, :, 2:, 2:]) / 3
    mix = rng.standard_normal((channels, mixing))
    x = np.einsum("cm,nmhw->nchw", mix, smooth) + 0.05 * rng.standard_normal((n, channels, size, size))
    return x.astype(np.float32)


def two_convs(rng, channels=12, size=10):
    """x -> Conv 3x3 (bias) -> Relu -> Conv 3x3 (bias) -> y"""
    w1 = (rng.standard_normal((channels, channels, 3, 3)) / 6).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3, 3)) / 6).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (w2, "W2"),
             (rng.standard_normal(channels).astype(np.float32) * 0.1, "B1"),
             (rng.standard_normal(channels).astype(np.float32) * 0.1, "B2"))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["N", channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("attrs", [dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2], group=2),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 2]),
                                   dict(auto_pad="SAME_LOWER", strides=[2, 2])])
def test_patches_give_the_conv_output_onnxruntime_computes(attrs):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4 // attrs.get("group", 1), 3, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    model = conv_model(x.shape, weight, bias, **attrs)
    y = run(model, {"x": x})[0]
    spec = conv_spec(model.graph.node[0], weight.shape)
    assert output_hw(spec, x.shape[2:]) == y.shape[2:]
    positions = sample_positions(rng, range(3), y.shape[2:], 40)
    patches = extract(x, 0, positions, spec, y.shape[2:])
    got = conv_outputs(patches, weight, bias, spec.group)
    np.testing.assert_allclose(got, pixels(y, 0, positions), rtol=1e-4, atol=1e-4)
    # A batch that starts later sees only its own samples' positions.
    later = extract(x[1:], 1, positions, spec, y.shape[2:])
    np.testing.assert_allclose(later, patches[positions.sample >= 1])


def test_recovery_rate_falls_with_the_terms_a_chain_adds_up():
    assert decompositions.get("cp").terms(64) == 64 and decompositions.get("svd").terms(32) == 32
    assert decompositions.get("tucker2").terms((64, 256)) == 128  # the geometric mean of its two ranks
    assert decompositions.get("lrcp").terms((24, 8)) is None  # not a number of terms: the rate stays
    assert rank_scaled_lr(1e-2, LR_RANK) == rank_scaled_lr(1e-2, 4) == rank_scaled_lr(1e-2, None) == 1e-2
    assert rank_scaled_lr(1e-2, decompositions.get("tucker2").terms((256, 256))) == pytest.approx(2.5e-3)


def test_following_finds_relu_silu_and_nothing_behind_a_second_consumer():
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "W"], ["b"]), helper.make_node("Sigmoid", ["b"], ["sb"]),
             helper.make_node("Mul", ["sb", "b"], ["silu"]),
             helper.make_node("Conv", ["silu", "W"], ["c"]), helper.make_node("Relu", ["c"], ["rc"]),
             helper.make_node("Add", ["c", "rc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "W")])
    index = GraphIndex(graph)
    found = [following(index, n) for n in graph.node if n.op_type == "Conv"]
    assert [(a.kind, a.output) for a in found] == [("relu", "ra"), ("silu", "silu"), ("identity", "c")]
    values = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(found[1].numpy(values), values / (1 + np.exp(-values)))


def test_data_aware_fit_lowers_the_output_error_on_correlated_inputs():
    rng = np.random.default_rng(1)
    x = correlated(rng, 60, 16, 10)
    weight = rng.standard_normal((16, 16, 3, 3))
    model = conv_model(x.shape, weight.astype(np.float32), pads=[1, 1, 1, 1])
    spec = conv_spec(model.graph.node[0], weight.shape)
    positions = sample_positions(rng, range(60), (10, 10), 3000)
    patches = extract(x, 0, positions, spec, (10, 10))
    fit_part, test_part = patches[:2000], patches[2000:]
    moments = MomentAccumulator(16, (3, 3), 1)
    moments.add(fit_part)
    fitter = solver_fitter(FitOptions(max_iter=60))
    plain = fit_layer([weight], 6, 0, fitter)
    aware = fit_weighted([weight], 6, 0, fitter, [group_weights(m) for m in moments.result()])
    want = conv_outputs(test_part, weight, None, 1)

    def error(fit):
        got = output_error(Pairs(test_part, want), decompositions.get("cp"), list(fit.groups), None,
                           following_identity())
        return got

    assert aware.rel_error >= plain.rel_error - 1e-9  # the kernel error is not what it minimizes
    assert error(aware) < 0.7 * error(plain), (error(aware), error(plain))


def following_identity():
    from onnx_cp.calibrate.follow import Activation

    return Activation("identity", "y")


@pytest.mark.parametrize("use_torch", [True, False])
def test_recovery_lowers_the_held_back_output_error(use_torch):
    if use_torch:
        pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    weight = cp_kernel(rng, (8, 8, 3, 3), 4)[0] + 0.3 * rng.standard_normal((8, 8, 3, 3))
    bias = rng.standard_normal(8)
    x = correlated(rng, 50, 8, 8)
    model = conv_model(x.shape, weight.astype(np.float32), pads=[1, 1, 1, 1])
    spec = conv_spec(model.graph.node[0], weight.shape)
    positions = sample_positions(rng, range(50), (8, 8), 2500)
    patches = extract(x, 0, positions, spec, (8, 8))
    # The prefix drifted: the layer now reads other inputs than the original did (scaled, shifted, noisy).
    fed = patches * 1.2 + 0.1 + 0.05 * rng.standard_normal(patches.shape)
    pairs = Pairs(fed, conv_outputs(patches, weight, bias, 1))
    train, held = pairs.split(np.arange(2000, len(fed)))
    start = fit_layer([weight], 4, 0, solver_fitter(FitOptions(max_iter=40)))
    relu = following_relu()
    result = recover(train, held, decompositions.get("cp"), list(start.groups), bias, relu,
                     RecoveryOptions(steps=100, use_torch=use_torch))
    assert result.error_after < 0.75 * result.error_before, (result.error_before, result.error_after)
    assert result.method == ("adam" if use_torch else "least-squares")
    again = output_error(held, decompositions.get("cp"), result.factors, result.bias, relu)
    assert again == pytest.approx(result.error_after)


@pytest.mark.parametrize("name, rank", [("tucker2", (4, 4)), ("svd", 4), ("lrcp", (6, 4)), ("gkpd", (2, (4, 4, 3, 1)))])
def test_recovery_trains_every_decomposition_through_its_own_outputs(name, rank):
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    weight = 0.3 * rng.standard_normal((8, 8, 3, 3))
    bias = rng.standard_normal(8)
    x = correlated(rng, 50, 8, 8)
    model = conv_model(x.shape, weight.astype(np.float32), pads=[1, 1, 1, 1])
    spec = conv_spec(model.graph.node[0], weight.shape)
    patches = extract(x, 0, sample_positions(rng, range(50), (8, 8), 2500), spec, (8, 8))
    fed = patches * 1.2 + 0.1 + 0.05 * rng.standard_normal(patches.shape)  # a drifted prefix
    train, held = Pairs(fed, conv_outputs(patches, weight, bias, 1)).split(np.arange(2000, len(fed)))
    d = decompositions.get(name)
    start = d.fit([weight], rank, 0)
    # the chain's outputs in numpy are the realized kernel's
    np.testing.assert_allclose(d.outputs(held.patches, list(start.groups)),
                               conv_outputs(held.patches, np.concatenate(d.kernels(start.groups)), None, 1),
                               rtol=1e-6, atol=1e-9)
    result = recover(train, held, d, list(start.groups), bias, following_relu(), RecoveryOptions(steps=150))
    assert result.method == "adam" and result.error_after < 0.8 * result.error_before, \
        (result.error_before, result.error_after)
    assert [f.shape for f in result.factors[0]] == [f.shape for f in start.groups[0]]


def following_relu():
    from onnx_cp.calibrate.follow import Activation

    return Activation("relu", "r")


def test_waves_follow_rewritten_ancestors_only():
    # x -> a -> b ; x -> c (parallel to a) ; b + c -> d
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"]), helper.make_node("Conv", ["a", "W"], ["b"]),
             helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Add", ["b", "c"], ["s"]),
             helper.make_node("Conv", ["s", "W"], ["d"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)])
    model = helper.make_model(graph)
    assert waves(model, ["a", "b", "c", "d"]) == {"a": 0, "b": 1, "c": 0, "d": 2}
    assert waves(model, ["c", "d"]) == {"c": 0, "d": 1}


def test_set_biases_gives_a_new_bias_and_drops_the_old():
    rng = np.random.default_rng(3)
    model = conv_model((1, 2, 4, 4), rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
                       np.zeros(3, np.float32))
    set_biases(model, {"y": np.array([1.0, 2.0, 3.0])})
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    assert "B" not in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)
    base = conv_model((1, 2, 4, 4), numpy_helper.to_array(model.graph.initializer[0]))
    np.testing.assert_allclose(run(model, {"x": x})[0] - run(base, {"x": x})[0],
                               np.broadcast_to(np.array([1, 2, 3.0])[None, :, None, None], (1, 3, 4, 4)), atol=1e-5)


def _config(path, **kw):
    return RewriteConfig(ranks=(6,), realize="cp4", jobs=1, measure=False, calib=str(path), calib_samples=40,
                         recover_steps=120, max_iter=40, **kw)


def test_rewrite_with_calib_recovers_and_reports(tmp_path):
    rng = np.random.default_rng(4)
    model = two_convs(rng)
    x = correlated(rng, 60, 12, 10)
    np.save(tmp_path / "calib.npy", x[:40])
    plain = rewrite_with_report(model, RewriteConfig(ranks=(6,), realize="cp4", jobs=1, measure=False,
                                                     max_iter=40)).model
    result = rewrite_with_report(model, _config(tmp_path / "calib.npy"))
    onnx.checker.check_model(result.model, full_check=True)
    rows = result.report.rewritten
    assert len(rows) == 2 and all(r.output_error_after < r.output_error_before for r in rows)
    assert rows[1].recovery.endswith("target after identity") and "relu" in rows[0].recovery
    cal = result.report.calibration
    assert cal["held_back"] == 8 and cal["output_error"] < cal["output_error_fitted"]
    assert "calibration" in result.report.to_json()
    test = x[40:]
    want = run(model, {"x": test})[0]

    def error(m):
        return float(np.linalg.norm(run(m, {"x": test})[0] - want) / np.linalg.norm(want))

    assert error(result.model) < 0.8 * error(plain), (error(result.model), error(plain))
    no_recover = rewrite_with_report(model, _config(tmp_path / "calib.npy", recover=False))
    assert no_recover.report.rewritten[0].output_error_after is None
    assert error(result.model) < error(no_recover.model) < error(plain)


@pytest.mark.parametrize("data, problem", [
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "NaN or Inf"),
    (lambda x: x[:, :, :5], "samples have shape"),
    (lambda x: x > 0, "save them as float32"),
    (lambda x: x[:0], "no samples"),
])
def test_bad_calibration_data_is_refused_in_one_line_before_any_fit(tmp_path, data, problem):
    model = two_convs(np.random.default_rng(5))
    x = correlated(np.random.default_rng(5), 4, 12, 10)
    np.save(tmp_path / "bad.npy", data(x))

    def no_fit(*args):
        raise AssertionError("fitted before the data was checked")

    with pytest.raises(OnnxCpError, match=problem) as info:
        rewrite_with_report(model, _config(tmp_path / "bad.npy"), fitter=no_fit)
    assert info.value.usage and "\n" not in str(info.value)


def test_an_empty_image_folder_is_refused(tmp_path):
    model = two_convs(np.random.default_rng(6))
    (tmp_path / "images").mkdir()
    with pytest.raises(OnnxCpError, match="no images"):
        rewrite_with_report(model, _config(tmp_path / "images"))


def test_too_few_samples_warn_with_the_number_needed(tmp_path):
    rng = np.random.default_rng(7)
    model = two_convs(rng)
    np.save(tmp_path / "few.npy", correlated(rng, 3, 12, 10))
    report = rewrite_with_report(model, _config(tmp_path / "few.npy", recover=False)).report
    note = next(n for n in report.notes if "too few" in n)
    assert "needs 7" in note and "give at least 8 samples" in note


def maxout_block_model(rng, factors):
    """Conv (stride 1, pad 1) -> maxout of 2 channel halves -> Conv 3x3 (no pad) -> Relu."""
    ut, us, uy, ux = factors
    w1 = np.einsum("tr,sr,yr,xr->tsyx", ut, us, uy, ux).astype(np.float32)
    w2 = rng.standard_normal((3, w1.shape[0] // 2, 3, 3)).astype(np.float32)
    half = w1.shape[0] // 2
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([half], np.int64), "s1"),
             numpy_helper.from_array(np.array([2 * half], np.int64), "s2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["a", "s0", "s1", "ax"], ["a0"]),
             helper.make_node("Slice", ["a", "s1", "s2", "ax"], ["a1"]),
             helper.make_node("Max", ["a0", "a1"], ["m"]),
             helper.make_node("Conv", ["m", "W2"], ["b"]), helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, w1


def test_maxout_is_followed_and_block_recovery_trains_on_the_next_conv():
    from onnx_cp.calibrate.activations import outputs, probe
    from onnx_cp.calibrate.block import gather, next_block, refine

    rng = np.random.default_rng(3)
    exact = (rng.standard_normal((4, 3)), rng.standard_normal((3, 3)), rng.standard_normal((3, 3)),
             rng.standard_normal((3, 3)))
    model, w1 = maxout_block_model(rng, exact)
    index = GraphIndex(model.graph)
    act = following(index, model.graph.node[0])
    assert (act.kind, act.output, act.alpha) == ("maxout", "m", 2.0)
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    a, m = outputs(probe(model, ["a", "m"]), x)
    np.testing.assert_allclose(act.numpy(a.transpose(0, 2, 3, 1)), m.transpose(0, 2, 3, 1), rtol=1e-6)
    spec = conv_spec(model.graph.node[0], w1.shape)
    block = next_block(index, spec, act)
    assert block is not None and block.node.output[0] == "b" and block.act.kind == "relu"
    regions, targets, held = gather(model, model, "x", spec, block, (8, 8), (8, 8), (6, 6), x, 32, 600, 0, 1)
    assert regions.shape[1:] == (3, 5, 5) and len(held)
    bias = np.zeros(4)
    _, _, before, _, _ = refine(regions, targets, held, exact, bias, spec, act, block, 0, 1e-2, 64, None, 0, 1)
    assert before < 1e-4  # the exact chain through the block reproduces the model
    noisy = tuple(f + 0.3 * rng.standard_normal(f.shape) for f in exact)
    _, _, before, after, steps = refine(regions, targets, held, noisy, bias, spec, act, block, 200, 1e-2, 64,
                                        None, 0, 1)
    assert steps == 200 and after < 0.7 * before


def test_rank_selection_with_calib_fits_data_aware_once(tmp_path):
    """--target-speedup with --calib: the candidates are fitted to the layers' weighted kernels,
    and the rewrite reuses the kept fits instead of fitting again."""
    from onnx_cp.ranks.options import RankSelection

    rng = np.random.default_rng(5)
    model = two_convs(rng)
    np.save(tmp_path / "calib.npy", correlated(rng, 40, 12, 10))
    weights = {numpy_helper.to_array(t).tobytes() for t in model.graph.initializer if t.name in ("W1", "W2")}
    warm = solver_fitter(FitOptions(max_iter=20, stabilize="never"))
    seen, labels = [], []

    def fitter(kernel, rank, seed):
        seen.append(np.asarray(kernel, np.float32).tobytes())
        return warm(kernel, rank, seed, None)

    config = RewriteConfig(selection=RankSelection(target_speedup=1.5, measure=False, candidates=3), realize="cp4",
                           jobs=1, measure=False, calib=str(tmp_path / "calib.npy"), recover=False,
                           input_shapes={"x": (1, 12, 10, 10)})
    result = rewrite_with_report(model, config, fitter=fitter, progress=lambda label, *_: labels.append(label))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.rewritten and seen
    assert not weights & set(seen)  # every fit saw a weighted kernel, none the raw weight
    assert not [l for l in labels if l.startswith("fitting: ")]  # no second round of fits
    assert 0 < result.report.calibration["output_error"] < 1


def test_probe_keeps_only_the_nodes_its_tensors_need_subgraph_captures_included():
    """Reading an early tensor must not run the rest of the model (onnxruntime runs every node
    of a graph): the probe drops what the wanted tensors do not depend on, and keeps the
    producer of a tensor that an If branch reads from the outer scope."""
    from onnx_cp.calibrate.activations import outputs, probe

    then = helper.make_graph([helper.make_node("Neg", ["r"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Abs", ["r"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["f"], then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["x"], ["unused"]),
             helper.make_node("Exp", ["unused"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    probed = probe(model, ["f"])
    assert [n.op_type for n in probed.graph.node] == ["Relu", "ReduceSum", "Greater", "If"]
    assert [n.op_type for n in model.graph.node] == ["Relu", "ReduceSum", "Greater", "If", "Sigmoid", "Exp"]
    x = np.array([[1.0, -2.0, 3.0], [0.5, -0.5, 2.0]], np.float32)
    (f,) = outputs(probed, x)
    np.testing.assert_allclose(f, -np.maximum(x, 0))  # sum > 0: the then branch, Neg(Relu(x))


def test_a_recovered_layer_is_reused_while_its_factors_and_the_rewritten_layers_above_it_are_unchanged(monkeypatch):
    from onnx_cp.calibrate import layerwise
    from onnx_cp.calibrate.observe import observe
    from onnx_cp.shapes import infer_shapes
    from onnx_cp.sites import find_sites
    from onnx_cp.splice import Replacement

    rng = np.random.default_rng(5)
    model = two_convs(rng)
    shapes, _ = infer_shapes(model, {"x": (1, 12, 10, 10)})
    first, second = find_sites(model, shapes, "tucker2")
    x = correlated(rng, 24, 12, 10)
    observed = observe(model, [first, second], x, 18, 400, 0)
    trained = []
    real = layerwise._recover_one
    monkeypatch.setattr(layerwise, "_recover_one",
                        lambda index, rep, *rest: trained.append(rep.site.name) or real(index, rep, *rest))
    options = RecoveryOptions(steps=5, block=0)
    memo = {}

    def recovered(*reps):
        return layerwise.recover_layers(model, list(reps), observed, x, options, None, memo=memo)

    a, b = (Replacement.placeholder(s, "tucker2", (4, 4), seed) for s, seed in ((first, 1), (second, 2)))
    once = recovered(a, b)
    assert trained == ["conv1", "conv2"]
    twice = recovered(a, b)
    assert trained == ["conv1", "conv2"]  # nothing trained again, the same layers back
    for one, two in zip(once, twice):
        for f, g in zip(one.replacement.factors[0], two.replacement.factors[0]):
            np.testing.assert_array_equal(f, g)
    recovered(a, Replacement.placeholder(second, "tucker2", (4, 4), 3))  # below the first: it is kept
    assert trained == ["conv1", "conv2", "conv2"]
    recovered(Replacement.placeholder(first, "tucker2", (4, 4), 4), b)  # above the second: both train
    assert trained == ["conv1", "conv2", "conv2", "conv1", "conv2"]
    layerwise.recover_layers(model, [a, b], observed, x, dataclasses.replace(options, steps=6), None, memo=memo)
    assert trained[-2:] == ["conv1", "conv2"]  # other options: trained again

"""--decomposition auto with a budget: the allocation spans CP, Tucker-2 and SVD candidates."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import float_model, relative_difference, run
from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report


def mixed_model(seed=0, size=12):
    """x -> 3x3 Conv 4->96 -> Relu -> 1x1 Conv 96->96 -> Relu -> 3x3 Conv 96->4 -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm 4->48 (transB) -> y; seeded random weights. The 1x1
    Conv holds 57% of the multiply-adds, so a 2x budget needs it rewritten."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(name, x, cin, cout, k):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (k * k * cin))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"),
                      numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_out"], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    h = conv("conv_c", conv("conv_b", conv("conv_a", "x", 4, 96, 3), 96, 96, 1), 96, 4, 3)
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    inits.extend([numpy_helper.from_array((rng.standard_normal((48, 4)) * 0.2).astype(np.float32), "fc_w"),
                  numpy_helper.from_array((rng.standard_normal(48) * 0.1).astype(np.float32), "fc_b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1))
    return float_model("mixed", nodes, inits, (1, 4, size, size), (1, 48))


def faster_everywhere(models):
    """A layer timer that finds every rewritten layer twice as fast as its original."""
    keys = [n.output[0] for n in models[0].graph.node if n.op_type in ("Conv", "Gemm")]
    return [{k: 1.0 if i == 0 else 0.5 for k in keys} for i in range(len(models))]


def layer(result, name):
    return next(l for l in result.report.layers if l.node == name)


def rewrite(model, decomposition, target=2.0, **selection):
    selection = RankSelection(target_speedup=target, measure=False, candidates=3, calib_count=2, **selection)
    config = RewriteConfig(selection=selection, decomposition=decomposition, max_iter=20, stabilize="never")
    return rewrite_with_report(model, config, timer=faster_everywhere)


def test_auto_budget_rewrites_the_1x1_by_svd_within_the_mac_budget():
    model = mixed_model()
    result = rewrite(model, "auto")
    onnx.checker.check_model(result.model, full_check=True)
    summary = result.report.rank_selection
    assert summary["total_after"] <= summary["target_total"] * (1 + 1e-9)
    assert summary["predicted_speedup"] >= 2.0 - 1e-9
    # every rewritten layer's multiply-adds are what the allocation counted for it
    for l in result.report.rewritten:
        assert l.cost == l.macs_after and l.proxy_error is not None
    assert layer(result, "conv_b").status == "rewritten"
    assert layer(result, "conv_b").decomposition == "svd" and layer(result, "conv_b").realization == "svd"
    assert {l.decomposition for l in result.report.rewritten} <= {"cp", "tucker2", "svd"}
    assert sum(summary["decompositions"].values()) == len(result.report.rewritten)
    # the written model's MACs: the untouched rest plus the rewritten layers as counted
    after = sum(l.macs_after if l.status == "rewritten" else l.macs_before for l in result.report.layers)
    assert after <= summary["target_total"] * (1 + 1e-9)
    x = np.random.default_rng(1).standard_normal((1, 4, 12, 12)).astype(np.float32)
    want, got = run(model, {"x": x})[0], run(result.model, {"x": x})[0]
    assert got.shape == want.shape and relative_difference(want, got) < 1.0
    rows = {r["node"]: r for r in result.report.to_dict()["layers"]}
    assert rows["conv_b"]["decomposition"] == "svd"


def linear_model(op="Gemm", seed=0):
    """x -> 3x3 Conv 4->16 -> Relu -> Flatten -> Gemm 1024->256 (transB) or MatMul -> y: the
    linear layer holds 88% of the multiply-adds."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, 4, 3, 3)) * 0.2).astype(np.float32)
    fc = (rng.standard_normal((256, 1024)) * 0.03).astype(np.float32)
    inits = [numpy_helper.from_array(w, "conv_w"), numpy_helper.from_array(fc if op == "Gemm" else fc.T, "fc_w")]
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["h"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["flat"], name="flatten")]
    if op == "Gemm":
        inits.append(numpy_helper.from_array((rng.standard_normal(256) * 0.1).astype(np.float32), "fc_b"))
        nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["flat", "fc_w"], ["y"], name="fc"))
    return float_model("linear", nodes, inits, (1, 4, 8, 8), (1, 256))


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_auto_budget_rewrites_a_gemm_or_matmul_by_svd(op):
    model = linear_model(op)
    result = rewrite(model, "auto")
    onnx.checker.check_model(result.model, full_check=True)
    fc = layer(result, "fc")
    assert fc.status == "rewritten" and fc.decomposition == "svd"
    assert [n.op_type for n in result.model.graph.node].count(op) == 2
    summary = result.report.rank_selection
    assert summary["total_after"] <= summary["target_total"] * (1 + 1e-9)
    assert summary["total_before"] == sum(l.macs_before for l in result.report.layers)  # the Gemm counted once
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    want, got = run(model, {"x": x})[0], run(result.model, {"x": x})[0]
    assert got.shape == want.shape and relative_difference(want, got) < 1.0
    # the proxy's layer error is the error the SVD leaves on the layer's own output
    assert 0 < fc.proxy_error < 1


def test_cp_selection_is_unchanged_by_auto():
    """--decomposition cp plans CP ranks for the k x k Convs alone, as before."""
    result = rewrite(mixed_model(), "cp", target=1.3)
    assert {l.decomposition for l in result.report.rewritten} == {"cp"}
    assert layer(result, "conv_b").status == "ineligible"
    summary = result.report.rank_selection
    assert "decompositions" not in summary and summary["cost"] == "macs"
    # the ranks and figures the CP-only selection gave before auto joined the budget
    assert [layer(result, n).rank for n in ("conv_a", "conv_c")] == [8, 16]
    assert summary["total_after"] == 1693632
    assert summary["output_error"] == pytest.approx(0.51055, abs=2e-4)


@pytest.mark.parametrize("op, attrs, x_shape", [("Gemm", dict(transB=1, alpha=0.5), (6, 20)),
                                                ("Gemm", dict(transA=1, alpha=2.0), (20, 6)),
                                                ("MatMul", {}, (2, 3, 20))])
def test_proxy_layer_error_of_a_linear_layer_is_its_output_error_in_onnxruntime(op, attrs, x_shape):
    from onnx_cp.decompositions.linear import out_in_matrix
    from onnx_cp.ranks.proxy import layer_errors

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((30, 20) if attrs.get("transB") else (20, 30)).astype(np.float32)
    approx = rng.standard_normal((30, 20)) * 0.5  # an (out, in) estimate of the weight

    def model(w):
        node = helper.make_node(op, ["x", "W"], ["y"], name="fc", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w.astype(np.float32), "W")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    original = model(weight)
    node = original.graph.node[0]
    matrix = out_in_matrix(node, weight).astype(np.float64)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = run(original, {"x": x})[0]
    estimate = approx.T if not attrs.get("transB") else approx  # the same estimate as a weight of this node
    want = np.linalg.norm(y - run(model(estimate), {"x": x})[0]) / np.linalg.norm(y)
    got, = layer_errors(node, matrix, [approx], x, y, 17)
    assert got == pytest.approx(want, rel=1e-4)


def test_latency_lines_run_in_multiply_adds_for_every_form():
    from onnx_cp.measure import Measurement
    from onnx_cp.ranks.cost import measure_probes, option_macs
    from onnx_cp.shapes import infer_shapes
    from onnx_cp.sites import find_convs

    model = mixed_model()
    shapes, _ = infer_shapes(model, {})
    sites = {s.name: s for s in find_convs(model, shapes, "auto")}
    a, b = sites["conv_a"], sites["conv_b"]
    seen = []

    def layers(models):  # the input, then per slot its low and high variant
        seen.extend(models)
        return [{"conv_a_out": 10.0, "conv_b_out": 20.0}, {"conv_a_out": 2.0, "conv_b_out": 4.0},
                {"conv_a_out": 4.0, "conv_b_out": 8.0}, {"conv_a_out": 3.0}, {"conv_a_out": 4.0}][:len(models)]

    profiler = Measurement.injected(SimpleNamespace(layers=layers, whole=lambda models: [40.0] * len(models)))
    probes = [(a, [("cp4", 4, 8), ("tucker2", (4, 8), (4, 16))]), (b, [("svd", 4, 12)])]
    timing = measure_probes(model, probes, profiler)
    assert len(seen) == 5 and timing.total_ms == 40.0
    ops = [sorted({n.op_type for n in m.graph.node if "/" in n.name}) for m in seen]
    assert ops[1] == ops[2] == ["Conv"] and {n.name.split("/")[1] for n in seen[3].graph.node if "/" in n.name} == \
        {"tucker2"}
    assert timing.original_ms == {"conv_a_out": 10.0, "conv_b_out": 20.0}
    assert timing.option_cost(a, "cp", 6) == pytest.approx(3.0)  # halfway in rank
    low, high = option_macs(a, "tucker2", (4, 8)), option_macs(a, "tucker2", (4, 16))
    mid = option_macs(a, "tucker2", (4, 12))
    assert timing.option_cost(a, "tucker2", (4, 12)) == pytest.approx(3.0 + 1.0 * (mid - low) / (high - low))
    assert timing.option_cost(b, "svd", 8) == pytest.approx(6.0)  # svd's multiply-adds are linear in its rank
    assert timing.option_form(a, "cp", 6) == "cp4" and timing.option_form(a, "tucker2", (4, 12)) == "tucker2"


def test_auto_budget_with_calib_fits_svd_and_tucker2_to_the_layer_inputs(tmp_path):
    x = np.random.default_rng(2).standard_normal((24, 4, 12, 12)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    selection = RankSelection(target_speedup=2.0, measure=False, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, decomposition="auto", max_iter=20, stabilize="never",
                           calib=str(tmp_path / "calib.npy"), recover_steps=20)
    result = rewrite_with_report(mixed_model(), config, timer=faster_everywhere)
    onnx.checker.check_model(result.model, full_check=True)
    assert layer(result, "conv_b").decomposition == "svd"
    assert result.report.rank_selection["calibration"]["source"].endswith("calib.npy")
    # the plain truncated SVD has the least kernel error at its rank; fitted to the layer's inputs,
    # the SVD gives some of it up
    from onnx_cp import decompositions

    weight = next(numpy_helper.to_array(t) for t in mixed_model().graph.initializer if t.name == "conv_b_w")
    plain = decompositions.get("svd").fit([weight.astype(np.float64)], layer(result, "conv_b").rank)
    assert layer(result, "conv_b").rel_error > plain.rel_error + 1e-3


def test_auto_with_a_rank_rule_gives_a_1x1_conv_only_the_decompositions_that_apply():
    # CP does not apply to the 1x1 conv_b: its candidates are SVD's alone (cp4 of a 1x1 kernel crashed)
    model = mixed_model()
    config = RewriteConfig(ranks=(8,), decomposition="auto", max_iter=20, stabilize="never")
    result = rewrite_with_report(model, config, timer=faster_everywhere)
    onnx.checker.check_model(result.model, full_check=True)
    assert layer(result, "conv_b").status == "rewritten" and layer(result, "conv_b").decomposition == "svd"
    assert {layer(result, n).status for n in ("conv_a", "conv_c")} == {"rewritten"}


def test_profiled_layer_times_are_scaled_to_the_whole_model_time():
    # profiled runs are slower than plain ones: the layers' times are put on the whole-model scale,
    # so that the time no layer can save (the whole time less theirs) keeps its share of the profile
    from onnx_cp.measure import Latency, Measurement
    from onnx_cp.ranks.cost import measure_probes
    from onnx_cp.shapes import infer_shapes
    from onnx_cp.sites import find_convs

    model = mixed_model()
    shapes, _ = infer_shapes(model, {})
    sites = {s.name: s for s in find_convs(model, shapes, "auto")}
    profiled = [{"conv_a_out": 10.0, "conv_b_out": 20.0}, {"conv_a_out": 2.0, "conv_b_out": 4.0},
                {"conv_a_out": 4.0, "conv_b_out": 8.0}]

    def profiles(models):  # a profiled total of 50 ms: 20 of it in no layer
        return [(50.0, t) for t in profiled[:len(models)]]

    measurement = Measurement(lambda models: [t for _, t in profiles(models)],
                              lambda models: [Latency(40.0)] * len(models), profiles=profiles)
    timing = measure_probes(model, [(sites["conv_a"], [("cp4", 4, 8)]), (sites["conv_b"], [("svd", 4, 12)])],
                            measurement)
    assert timing.total_ms == 40.0
    assert timing.original_ms == pytest.approx({"conv_a_out": 8.0, "conv_b_out": 16.0})  # 40 / 50 of the profile
    assert timing.option_cost(sites["conv_a"], "cp", 4) == pytest.approx(1.6)
    assert timing.option_cost(sites["conv_a"], "cp", 8) == pytest.approx(3.2)
    assert timing.option_cost(sites["conv_b"], "svd", 12) == pytest.approx(6.4)
    assert timing.total_ms - sum(timing.original_ms.values()) == pytest.approx(16.0)  # 20 of 50, as profiled


def test_in_int8_each_layer_is_found_in_the_profile_under_the_relu_it_is_fused_with():
    """onnxruntime profiles a quantized Conv + Relu as one int8 node under the Relu's output; the
    probe still gives every Conv its time (real onnxruntime profiles of the model in INT8)."""
    from onnx_cp.measure import Measurement
    from onnx_cp.quantize import quantize_int8
    from onnx_cp.ranks.cost import measure_probes
    from onnx_cp.shapes import infer_shapes
    from onnx_cp.sites import find_convs

    model = mixed_model(size=24)
    shapes, _ = infer_shapes(model, {})
    sites = {s.name: s for s in find_convs(model, shapes, "auto")}
    x = np.random.default_rng(0).standard_normal((4, 4, 24, 24)).astype(np.float32)
    measurement = Measurement.onnxruntime(model, 1, "all", {"x": (1, 4, 24, 24)})
    int8 = quantize_int8(model, x)
    assert any(n.op_type == "DequantizeLinear" for n in int8.graph.node)
    profile = measurement.layers([int8])[0]
    assert "conv_a_out" not in profile and "conv_a_relu" in profile  # fused, under the Relu's output
    probes = [(sites["conv_a"], [("cp4", 4, 8)]), (sites["conv_b"], [("svd", 8, 16)])]
    timing = measure_probes(model, probes, measurement, lambda m: quantize_int8(m, x))
    assert timing.original_ms["conv_a_out"] > 0 and timing.original_ms["conv_b_out"] > 0
    assert all(b >= 0 and a + b > 0 for lines in timing.affine.values() for a, b in lines.values())

"""onnx_cp.bench and ``onnx-cp bench``: profile attribution back to original layers at every
optimization level, the report formats, and refusals of bad arguments. No timing assertions."""
from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnx_cp.bench import (Attribution, BenchConfig, LatencyStats, compare, measure_latency, profile_nodes,
                           read_cp_layers, run_bench)
from onnx_cp.bench.feeds import make_feeds
from onnx_cp.bench.trace import split_runs
from onnx_cp.commands.bench_cmd import bench_command
from onnx_cp.errors import OnnxCpError

C, R, HW = 16, 4, 12
CP_NODES = ["conv2/cp/reduce", "conv2/cp/vertical", "conv2/cp/horizontal", "conv2/cp/expand"]
MACS_BEFORE, MACS_AFTER = C * C * 9 * HW * HW, R * (C + 3 + 3 + C) * HW * HW
FAST = dict(warmup=1, runs=3)


def _init(rng, name, shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inits, batch="N"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, HW, HW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, C, HW, HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def original_model(batch="N"):
    """x -> conv1 3x3 -> relu1 -> conv2 3x3 -> add2(+relu1) -> Relu (unnamed) -> y"""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Add", ["c2", "r1"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["y"]),
    ]
    inits = [_init(rng, "w1", (C, C, 3, 3)), _init(rng, "b1", (C,)), _init(rng, "w2", (C, C, 3, 3)),
             _init(rng, "b2", (C,))]
    return _model(nodes, inits, batch)


def rewritten_model(*, metadata=True, three_conv=False):
    """As original_model, conv2 replaced by reduce 1x1 -> vertical 3x1 -> horizontal 1x3 -> expand 1x1
    (or reduce -> spatial 3x3 -> expand); the unnamed Relu moves from index 4 to 7 (or 6)."""
    rng = np.random.default_rng(1)
    if three_conv:
        cp = [helper.make_node("Conv", ["r1", "us"], ["t1"], name="conv2/cp/reduce", kernel_shape=[1, 1]),
              helper.make_node("Conv", ["t1", "uyx"], ["t3"], name="conv2/cp/spatial", kernel_shape=[3, 3],
                               pads=[1] * 4, group=R)]
        cp_inits = [_init(rng, "uyx", (R, 1, 3, 3))]
    else:
        cp = [helper.make_node("Conv", ["r1", "us"], ["t1"], name="conv2/cp/reduce", kernel_shape=[1, 1]),
              helper.make_node("Conv", ["t1", "uy"], ["t2"], name="conv2/cp/vertical", kernel_shape=[3, 1],
                               pads=[1, 0, 1, 0], group=R),
              helper.make_node("Conv", ["t2", "ux"], ["t3"], name="conv2/cp/horizontal", kernel_shape=[1, 3],
                               pads=[0, 1, 0, 1], group=R)]
        cp_inits = [_init(rng, "uy", (R, 1, 3, 1)), _init(rng, "ux", (R, 1, 1, 3))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        *cp,
        helper.make_node("Conv", ["t3", "ut", "b2"], ["c2"], name="conv2/cp/expand", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["y"]),
    ]
    inits = [_init(rng, "w1", (C, C, 3, 3)), _init(rng, "b1", (C,)), _init(rng, "us", (R, C, 1, 1)), *cp_inits,
             _init(rng, "ut", (C, R, 1, 1)), _init(rng, "b2", (C,))]
    model = _model(nodes, inits)
    if metadata:
        layer = {"node": "conv2", "nodes": [n.name for n in nodes if "/cp/" in n.name], "rank": R,
                 "macs_before": MACS_BEFORE, "macs_after": MACS_AFTER}
        helper.set_model_props(model, {"onnx_cp": json.dumps({"version": 1, "layers": [layer]})})
    return model


# -- attribution of onnxruntime's profile to original layers ----------------------------------

@pytest.mark.parametrize("opt_level", ["disable", "basic", "extended", "all"])
def test_every_rewritten_node_counts_under_its_original_conv(opt_level):
    original, rewritten = profile_nodes([original_model(), rewritten_model()], opt_level=opt_level, **FAST)
    assert all(layer.mapped for p in (original, rewritten) for layer in p.layers), \
        [(n.name, n.how) for p in (original, rewritten) for layer in p.layers for n in layer.nodes]
    assert not [layer.layer for layer in rewritten.layers if "/cp/" in layer.layer]
    assert "conv2" in [layer.layer for layer in rewritten.layers]
    assert rewritten.total_ms > 0 and sum(layer.share for layer in rewritten.layers) == pytest.approx(1.0)

    # whatever onnxruntime fused or re-laid out, the rewrite's layers line up one to one with the original's
    rows = {row.layer: row for row in compare(original, rewritten).layers}
    assert list(rows) == [layer.layer for layer in original.layers]
    assert rows["conv2"].rewritten and rows["conv2"].rank == R
    assert rows["conv2"].mac_ratio == pytest.approx(MACS_BEFORE / MACS_AFTER)
    assert all(row.original_ms is not None and row.rewritten_ms is not None for row in rows.values())


def test_unnamed_nodes_match_across_models_by_their_outputs():
    # the unnamed Relu is graph.node[4] in the original and [7] in the rewrite: matched by its output
    original, rewritten = profile_nodes([original_model(), rewritten_model()], opt_level="disable", **FAST)
    assert [layer.layer for layer in original.layers] == ["conv1", "relu1", "conv2", "add2", "Relu_4"]
    assert rewritten.layer("Relu_7") is not None
    assert sorted(n.name for n in rewritten.layer("conv2").nodes) == sorted(CP_NODES)
    rows = compare(original, rewritten).layers
    assert [row.layer for row in rows] == ["conv1", "relu1", "conv2", "add2", "Relu_4"]


def test_cp_names_group_layers_without_metadata():
    model = rewritten_model(metadata=False, three_conv=True)
    layers, notes = read_cp_layers(model)
    assert list(layers) == ["conv2"] and notes == []
    assert layers["conv2"].nodes == ("conv2/cp/reduce", "conv2/cp/spatial", "conv2/cp/expand")
    assert layers["conv2"].mac_ratio is None
    (profile,) = profile_nodes([model], opt_level="disable", **FAST)
    assert [n.name for n in profile.layer("conv2").nodes if "/cp/" in n.name] != []
    row = next(r for r in compare(profile_nodes([original_model()], opt_level="disable", **FAST)[0],
                                  profile).layers if r.layer == "conv2")
    assert row.rewritten and row.mac_ratio is None and row.efficiency is None


def test_unreadable_metadata_falls_back_to_cp_names_with_a_note():
    model = rewritten_model(metadata=False)
    helper.set_model_props(model, {"onnx_cp": "{not json"})
    layers, notes = read_cp_layers(model)
    assert list(layers) == ["conv2"] and len(layers["conv2"].nodes) == 4
    assert len(notes) == 1 and "unreadable" in notes[0]


def test_generated_names_follow_the_layer_they_serve():
    """The names onnxruntime 1.2x-1.3x writes into profiles, checked on a hand-written optimized graph.

    loaded:    x -> conv1 -> c1 -> Relu (unnamed, [1]) -> r1 -> Transpose "tr" -> t -> conv2 -> y
    optimized: ReorderInput -> r1_nchwc (conv1+Relu) -> ReorderOutput -> tr -> ReorderInput_token_4
               -> y_nchwc -> ReorderOutput_token_6, plus a generated "Mystery_token_9" hanging off x.
    """
    rng = np.random.default_rng(0)
    loaded = _graph_model([
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["t"], name="tr", perm=[0, 1, 3, 2]),
        helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2/cp/expand", kernel_shape=[1, 1]),
    ], [_init(rng, "w1", (C, C, 1, 1)), _init(rng, "w2", (C, C, 1, 1))])
    optimized = helper.make_graph([
        helper.make_node("ReorderInput", ["x"], ["k0"], name="ReorderInput", domain="com.microsoft.nchwc"),
        helper.make_node("Conv", ["k0", "w1"], ["k1"], name="r1_nchwc", domain="com.microsoft.nchwc"),
        helper.make_node("ReorderOutput", ["k1"], ["r1"], name="ReorderOutput", domain="com.microsoft.nchwc"),
        helper.make_node("Transpose", ["r1"], ["t"], name="tr", perm=[0, 1, 3, 2]),
        helper.make_node("ReorderInput", ["t"], ["k2"], name="ReorderInput_token_4", domain="com.microsoft.nchwc"),
        helper.make_node("Conv", ["k2", "w2"], ["k3"], name="y_nchwc", domain="com.microsoft.nchwc"),
        helper.make_node("ReorderOutput", ["k3"], ["y"], name="ReorderOutput_token_6",
                         domain="com.microsoft.nchwc"),
        helper.make_node("Mystery", ["x"], ["m"], name="Mystery_token_9"),
    ], "opt", [], [])
    cp_layers, _ = read_cp_layers(loaded)
    attribution = Attribution(loaded, cp_layers, optimized)
    expected = {
        "ReorderInput": ("conv1", "layout"), "r1_nchwc": ("conv1", "nchwc"), "ReorderOutput": ("conv1", "layout"),
        "tr": ("tr", "name"), "ReorderInput_token_4": ("conv2", "layout"), "y_nchwc": ("conv2", "nchwc"),
        "ReorderOutput_token_6": ("conv2", "layout"), "Mystery_token_9": ("Mystery_token_9", "unmapped"),
        # not in the optimized graph: resolved by name alone
        "Relu_1": ("Relu_1", "name"), "fused conv1": ("conv1", "fused"),
        "conv2/cp/expand/MatMulAddFusion": ("conv2", "prefix"), "conv2/cp/expand_token_17": ("conv2", "prefix"),
        "Relu_12": ("Relu_12", "unmapped"),
    }
    got = {name: (r.layer, r.how) for name in expected for r in [attribution.resolve(name, "Conv")]}
    assert got == expected


def test_unnamed_nodes_are_numbered_as_onnxruntime_does_skipping_constants():
    (profile,) = profile_nodes([_graph_model([
        helper.make_node("Relu", ["x"], ["x0"]),
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.ones((C, C, 1, 1), np.float32))),
        helper.make_node("Conv", ["x0", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ], [])], opt_level="disable", **FAST)
    assert [(layer.layer, layer.mapped) for layer in profile.layers] == [
        ("Relu_0", True), ("Conv_1", True), ("Relu_2", True)]


def test_quantize_nodes_count_with_the_layer_they_serve():
    """x -> Q(x) -> DQ -> conv1 (weight w1 via DQ) -> c1 -> Q(c1) -> DQ -> Relu -> r -> Q -> DQ -> y

    The graph input's Q counts with conv1 (the layer it is there for), the graph output's DQ with
    relu, which lists y among its outputs as the float Relu did."""
    loaded = _graph_model([
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["w1q", "s", "z"], ["w1"], name="w1_DequantizeLinear"),
        helper.make_node("Conv", ["xd", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["c1", "s", "z"], ["c1q"], name="c1_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["c1q", "s", "z"], ["c1d"], name="c1_DequantizeLinear"),
        helper.make_node("Relu", ["c1d"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="r_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="y_DequantizeLinear"),
    ], [numpy_helper.from_array(np.ones((C, C, 1, 1), np.uint8), "w1q"),
        numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")])
    attribution = Attribution(loaded, {}, None)
    layer = {name: attribution.resolve(name).layer for name in
             ["x_QuantizeLinear", "x_DequantizeLinear", "w1_DequantizeLinear", "c1_QuantizeLinear",
              "c1_DequantizeLinear", "r_QuantizeLinear", "y_DequantizeLinear"]}
    assert layer == {"x_QuantizeLinear": "conv1", "x_DequantizeLinear": "conv1", "w1_DequantizeLinear": "conv1",
                     "c1_QuantizeLinear": "conv1", "c1_DequantizeLinear": "relu", "r_QuantizeLinear": "relu",
                     "y_DequantizeLinear": "relu"}
    assert attribution.outputs == {"conv1": ("c1",), "relu": ("r", "y")}


def _graph_model(nodes, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# -- trace parsing ---------------------------------------------------------------------------

def _run(ts):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 90}


def _kernel(name, ts, dur, op="Conv"):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_warmup_runs_are_dropped_from_the_trace():
    events = [_run(0), _kernel("a", 1, 500), _kernel("b", 10, 7),          # warm-up: slow
              _run(100), _kernel("a", 101, 20), _kernel("b", 110, 5),
              _run(200), _kernel("a", 201, 30), _kernel("a", 220, 1), _kernel("b", 230, 6, "Relu"),
              {"cat": "Node", "name": "a_fence_before", "ts": 202, "dur": 1}]
    trace = split_runs(events, skip=1)
    assert trace.runs == ({"a": 20.0, "b": 5.0}, {"a": 31.0, "b": 6.0})
    assert trace.ops == {"a": "Conv", "b": "Relu"}


def test_trace_without_run_events_splits_by_occurrence():
    events = [_kernel("a", 1, 500), _kernel("b", 2, 9), _kernel("a", 3, 20), _kernel("b", 4, 5)]
    assert split_runs(events, skip=1).runs == ({"a": 20.0, "b": 5.0},)


# -- latency and inputs ----------------------------------------------------------------------

def test_latency_stats_per_model_in_order(tmp_path):
    path = tmp_path / "original.onnx"
    onnx.save(original_model(), path)
    stats = measure_latency([path, rewritten_model()], runs=5, warmup=1, opt_level="basic")
    assert len(stats) == 2
    for s in stats:
        assert s.runs == 5 and s.min <= s.p10 <= s.median <= s.p90 and s.spread >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats[0].median = 0.0
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (s.median, s.min, s.mean, s.runs) == (3.0, 1.0, 4.0, 5)
    assert s.spread == pytest.approx((s.p90 - s.p10) / 3.0)


def test_feeds_take_batch_and_input_shapes_and_are_seeded():
    from onnx_cp.bench.source import load_models
    sessions = [s.session(BenchConfig().session_options()) for s in load_models([original_model()])]
    feeds = make_feeds(sessions, ["m"], input_shapes={}, batch=3, seed=7)
    assert feeds["x"].shape == (3, C, HW, HW) and feeds["x"].dtype == np.float32
    again = make_feeds(sessions, ["m"], input_shapes={"x": (2, C, HW, HW)}, batch=3, seed=7)
    assert again["x"].shape == (2, C, HW, HW)
    assert np.array_equal(make_feeds(sessions, ["m"], input_shapes={}, batch=3, seed=7)["x"], feeds["x"])


def test_dynamic_spatial_dims_need_an_input_shape():
    model = original_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(OnnxCpError, match=r"dimension 2 .*input_shapes=\{'x': \(1, 16, N, 12\)\}") as err:
        measure_latency([model], runs=1, warmup=0)
    assert err.value.usage and err.value.cli.endswith("fix it with --input-shape x=1x16xNx12")
    assert measure_latency([model], runs=1, warmup=0, input_shapes={"x": (1, C, HW, HW)})[0].runs == 1


def test_models_with_different_inputs_are_refused():
    other = original_model(batch=2)
    with pytest.raises(OnnxCpError, match="same inputs"):
        measure_latency([original_model(batch=1), other], runs=1, warmup=0)


# -- the report formats and the command ------------------------------------------------------

class _Bars(HTMLParser):
    def __init__(self):
        super().__init__()
        self.groups, self.bars, self.tables, self.external = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "g" and a.get("class") == "layer":
            self.groups.append(a["data-layer"])
        if tag == "rect" and a.get("class") == "bar" and self.groups and a.get("data-series") == "0":
            self.bars.append(self.groups[-1])
        self.tables += tag == "table"
        if tag in ("script", "link", "img") or (a.get("src") or "").startswith("http"):
            self.external.append(tag)


def test_bench_writes_json_markdown_and_html(tmp_path):
    original = tmp_path / "original.onnx"
    onnx.save(original_model(), original)
    md, page = tmp_path / "bench.md", tmp_path / "bench.html"
    result = CliRunner().invoke(bench_command, [str(original), "--runs", "2", "--warmup", "1", "--per-node",
                                                "--json", "-", "--markdown", str(md), "--html", str(page)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"onnx_cp_bench", "settings", "inputs", "models", "comparisons", "notes"} <= set(data)
    assert data["settings"]["runs"] == 2 and data["inputs"]["x"]["shape"] == [1, C, HW, HW]
    (model,) = data["models"]
    assert {"median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "spread", "runs"} <= set(model["latency"])
    layers = [layer["layer"] for layer in model["per_node"]["layers"]]
    assert "conv1" in layers and "conv2" in layers

    lines = md.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
    assert set(lines[header + 1]) <= set("|-: ") and lines[header + 2].startswith("| conv1 |")

    parser = _Bars()
    parser.feed(page.read_text())
    assert parser.groups == layers and parser.bars == layers
    assert parser.tables >= 2 and parser.external == []


def test_bench_compares_original_and_rewritten(tmp_path):
    original, rewritten = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(original_model(), original)
    onnx.save(rewritten_model(), rewritten)
    page = tmp_path / "cmp.html"
    result = CliRunner().invoke(bench_command, [str(original), str(rewritten), "--runs", "2", "--warmup", "1",
                                                "--per-node", "--json", "-", "--html", str(page)])
    assert result.exit_code == 0, result.output
    (comparison,) = json.loads(result.stdout)["comparisons"]
    rows = {row["layer"]: row for row in comparison["layers"]}
    assert rows["conv2"]["rewritten"] and rows["conv2"]["mac_ratio"] == pytest.approx(MACS_BEFORE / MACS_AFTER)
    assert comparison["whole_model"]["speedup"] > 0 and comparison["cp_layers"]["rewritten"]
    parser = _Bars()
    parser.feed(page.read_text())
    assert parser.groups == list(rows) and parser.bars == list(rows)
    assert "conv2" in result.stderr and "rewritten layers" in result.stderr  # the table, kept off stdout


def test_run_bench_without_per_node_has_no_profiles():
    report = run_bench([original_model()], BenchConfig(runs=1, warmup=0))
    assert report.models[0].profile is None and report.comparisons == ()
    assert report.to_dict()["models"][0]["per_node"] is None


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs 0 must be an integer >= 1"),
    (["--threads", "0"], "--threads 0 must be an integer >= 1"),
    (["--warmup", "-1"], "--warmup -1 must be an integer >= 0"),
    (["--batch", "0"], "--batch 0 must be an integer >= 1"),
    (["--opt-level", "fast"], "--opt-level 'fast' is unknown; use one of disable, basic, extended, all"),
    (["--input-shape", "images=1x3x8x8"], "--input-shape names images"),
    (["--input-shape", "x=1x3"], "--input-shape x=1x3 has 2 dimensions"),
    (["--html", "no/such/dir/b.html"], "directory 'no/such/dir' does not exist"),
])
def test_bench_refuses_bad_arguments(tmp_path, args, message):
    model = tmp_path / "m.onnx"
    onnx.save(original_model(), model)
    result = CliRunner().invoke(bench_command, [str(model), "--runs", "1", "--warmup", "0", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("onnx-cp: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_bench_refuses_missing_and_non_onnx_files(tmp_path):
    missing = tmp_path / "missing.onnx"
    result = CliRunner().invoke(bench_command, [str(missing)])
    assert result.exit_code == 2 and f"model file '{missing}' does not exist" in result.stderr
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    result = CliRunner().invoke(bench_command, [str(text)])
    assert result.exit_code == 2 and f"'{text}' is not an ONNX model" in result.stderr
    assert "pass an .onnx file" in result.stderr


def test_transform_summary_names_layout_ops_fusions_and_absorbed_ops():
    from onnx import helper

    from onnx_cp.bench.transforms import describe_transforms

    def graph(nodes):
        return helper.make_graph(nodes, "g", [], [])

    original = graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                      helper.make_node("Conv", ["r", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["y"])])
    optimized = graph([helper.make_node("ReorderInput", ["x"], ["xi"], domain="com.microsoft.nchwc"),
                       helper.make_node("Conv", ["xi", "w"], ["r"], domain="com.microsoft.nchwc"),
                       helper.make_node("ReorderOutput", ["r"], ["ro"], domain="com.microsoft.nchwc"),
                       helper.make_node("FusedConv", ["ro", "w2"], ["y"], domain="com.microsoft")])
    lines = describe_transforms(original, optimized, "m.onnx")
    assert lines == (
        "m.onnx: onnxruntime's NCHWc layout ran Conv x1, with ReorderInput x1, ReorderOutput x1 converting "
        "to and from it",
        "m.onnx: onnxruntime fused nodes into FusedConv x1",
        "m.onnx: ops absorbed or folded by onnxruntime (count before minus after): Relu x2",
    )
    assert describe_transforms(original, original, "m.onnx") == ()


# /proc/cpuinfo excerpts: an Intel Xeon with AVX-512 VNNI and AMX, an AMD EPYC with AVX2, an ARM server.
XEON = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2\n")
EPYC = "model name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes sve\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, name, isa", [
    (XEON, "Intel(R) Xeon(R) Processor", "AVX-512 VNNI + AMX"),
    (EPYC, "AMD EPYC 7B13 64-Core Processor", "AVX2"),
    (ARM, "", "SVE"),
    ("", "", "unknown ISA"),
])
def test_cpuinfo_gives_the_cpu_and_its_highest_isa(text, name, isa):
    from onnx_cp.machine import isa_level, parse_cpuinfo

    got_name, flags = parse_cpuinfo(text)
    assert (got_name, isa_level(flags)) == (name, isa)


@pytest.mark.parametrize("flags, isa", [
    ({"avx2", "avx_vnni"}, "AVX2 + AVX-VNNI"),  # a client CPU without AVX-512
    ({"avx2", "avx512f"}, "AVX-512"),
    ({"AVX2", "AVX512F", "AVX512VNNI"}, "AVX-512 VNNI"),  # macOS's sysctl spelling
    ({"fp", "asimd"}, "NEON"),
    ({"sse4_2"}, "SSE4.2"),
])
def test_isa_level_names_the_highest_level_and_its_extensions(flags, isa):
    from onnx_cp.machine import isa_level

    assert isa_level(flags) == isa


def test_this_machine_is_described_in_one_line():
    import os

    import onnxruntime as ort

    from onnx_cp.machine import describe_machine

    machine = describe_machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert machine.cores == cores and machine.onnxruntime == ort.__version__
    unit = "core" if cores == 1 else "cores"
    assert machine.label == f"{machine.cpu}, {machine.isa}, {cores} {unit}, onnxruntime {ort.__version__}"
    assert machine.to_dict() == {"cpu": machine.cpu, "isa": machine.isa, "cores": cores,
                                 "onnxruntime": ort.__version__, "label": machine.label}
    with pytest.raises(dataclasses.FrozenInstanceError):
        machine.cores = 1


def test_every_bench_output_names_the_machine(tmp_path):
    from html import escape

    from onnx_cp.machine import describe_machine

    original = tmp_path / "original.onnx"
    onnx.save(original_model(), original)
    paths = {"--json": tmp_path / "b.json", "--markdown": tmp_path / "b.md", "--html": tmp_path / "b.html"}
    args = [str(original), "--runs", "1", "--warmup", "0"] + [str(a) for kv in paths.items() for a in kv]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    label = describe_machine().label
    assert f"machine: {label}" in result.output  # the terminal's report
    assert json.loads(paths["--json"].read_text())["machine"] == describe_machine().to_dict()
    assert f"machine: {label}" in paths["--markdown"].read_text().replace("\\|", "|")
    assert f"machine: {escape(label)}" in paths["--html"].read_text()

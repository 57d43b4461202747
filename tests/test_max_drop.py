"""--max-drop: the fastest model within a drop of the user's metric, measured on data that chose
nothing; the sensitivity table; refusals in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from golden_timing import FakeTiming
from onnx_cp import OnnxCpError, RankSelection, RewriteConfig, rewrite_with_report
from onnx_cp.cli import cli
from onnx_cp.splice import splice

MODELS = Path(__file__).resolve().parent.parent / "models"
SHAPES = {"input": (1, 1, 28, 28)}
# Deterministic and quick: iterations bound the fits, no recovery, few candidates.
QUICK = dict(max_iter=10, stabilize="never", recover=False, jobs=1, input_shapes=SHAPES, calib_samples=24)


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> str:
    data = np.load(MODELS / "mnist_test.npz")
    path = tmp_path_factory.mktemp("drop") / "val.npz"
    np.savez(path, x=data["x"][:100], y=data["y"][:100])
    return str(path)


def rewrite(val, max_drop=0.02, **selection):
    """The API's keyword form: rank selection's options beside the config's."""
    model = onnx.load(MODELS / "mnist_cnn.onnx")
    return rewrite_with_report(model, max_drop=max_drop, data=val, candidates=3, calib_count=4, **selection,
                               **QUICK, timer=FakeTiming(model, SHAPES))


@pytest.fixture(scope="module")
def result(val):
    return rewrite(val)


def test_the_fastest_allocation_within_the_drop_is_written_and_its_drop_measured_held_back(result):
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    a = report.accuracy
    assert a["metric"] == "top1" and a["samples"] == {"choosing": 70, "held_back": 30}
    assert a["choosing"]["drop"] <= 0.02 + 1e-9  # what the search and the hold stage guarantee
    assert a["drop"] == pytest.approx(a["original"] - a["written"]) and a["within"] == (a["drop"] <= 0.02 + 1e-9)
    assert report.rewritten and report.speed["speedup"] > 1
    # every automatic layer has a sensitivity row saying what became of it
    rows = {r["layer"]: r for r in report.sensitivity}
    assert set(rows) == {"/0/Conv", "/3/Conv", "/6/Conv"}
    rewritten = {l.node for l in report.rewritten}
    assert all(rows[name]["decision"].startswith("rewritten") == (name in rewritten) for name in rows)
    assert all(r["ms_saved"] > 0 for r in rows.values())
    trials = report.rank_selection["trials"]
    assert trials and all(t["within"] == (t["drop"] <= 0.02 + 1e-9) for t in trials)
    # the allocations within the drop were timed together, and the fastest timed is the one written
    timed = [t for t in trials if t["measured_speedup"] is not None]
    assert len(timed) >= 2 and all(t["within"] for t in timed)
    written = [t for t in timed if t["predicted_speedup"] == pytest.approx(report.rank_selection["predicted_speedup"])]
    assert written[0]["measured_speedup"] == max(t["measured_speedup"] for t in timed)


def test_no_rewrite_within_the_drop_fails_naming_the_best_reached(val):
    # a metric only the input itself meets: any rewritten layer scores zero
    def untouched(path, data):
        return 0.0 if any("/cp/" in n.name for n in onnx.load(path).graph.node) else 1.0

    with pytest.raises(OnnxCpError, match="no layer could be rewritten within") as info:
        rewrite(val, 0.0, metric=untouched)
    assert not info.value.usage


def test_the_metric_is_a_users_function(val, tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "import numpy as np, onnxruntime as ort\n"
        "def exact(model_path, data):\n"
        "    s = ort.InferenceSession(model_path, providers=['CPUExecutionProvider'])\n"
        "    out = np.concatenate([s.run(None, {'input': data['x'][i:i + 1]})[0] for i in range(len(data['x']))])\n"
        "    return float((out.argmax(1) == data['y']).mean())\n")
    monkeypatch.chdir(tmp_path)
    result = rewrite(val, 0.05, metric="mine:exact")
    assert result.report.accuracy["metric"] == "mine:exact" and result.report.rewritten


def test_conflicts_and_missing_pieces_are_refused_in_one_line(val):
    with pytest.raises(OnnxCpError, match="conflict") as info:
        RankSelection(max_drop=0.01, target_speedup=2.0)
    assert "--max-drop" in info.value.cli and "--target-speedup" in info.value.cli
    with pytest.raises(OnnxCpError, match="conflict"):
        RankSelection(max_drop=0.01, max_error=0.3)
    with pytest.raises(OnnxCpError, match="data='val.npz'") as info:
        RewriteConfig(selection=RankSelection(max_drop=0.01))
    assert "--data val.npz" in info.value.cli
    with pytest.raises(OnnxCpError, match="max_drop"):
        RewriteConfig(ranks=(8,), data=val)
    with pytest.raises(OnnxCpError, match="not both"):
        rewrite_with_report(str(MODELS / "mnist_cnn.onnx"), RewriteConfig(ranks=(8,)), max_drop=0.01)


def cli_rewrite(tmp_path, *flags):
    return CliRunner().invoke(cli, ["rewrite", str(MODELS / "mnist_cnn.onnx"), "-o", str(tmp_path / "out.onnx"),
                                    *map(str, flags)])


@pytest.mark.parametrize("flags, message", [
    (("--rank", "8", "--holdout", "0.2"), "--holdout is used by --max-drop"),
    (("--max-drop", "1", "--target-speedup", "2", "--data", "D"), "conflict"),
    (("--max-drop", "1"), "give it with --data val.npz"),
    (("--max-drop", "1", "--data", "SMALL"), "each part needs at least 20"),
    (("--max-drop", "1", "--data", "VAL", "--metric", "no_such_module:f"), "no_such_module"),
    (("--max-drop", "1", "--data", "VAL", "--metric", "top1", "--drop", "sideways"), "sideways"),
])
def test_the_command_refuses_bad_accuracy_options_in_one_line(tmp_path, val, flags, message):
    small = tmp_path / "small.npz"
    np.savez(small, x=np.load(val)["x"][:30], y=np.load(val)["y"][:30])
    flags = [{"SMALL": small, "VAL": val}.get(f, f) for f in flags]
    result = cli_rewrite(tmp_path, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_the_command_writes_the_accuracy_and_sensitivity_to_the_report(tmp_path, val):
    report = tmp_path / "r.json"
    result = cli_rewrite(tmp_path, "--max-drop", "5", "--data", val, "--max-iter", "10", "--stabilize", "never",
                         "--no-recover", "--calib-samples", "24", "--input-shape", "input=1x1x28x28", "--report", report,
                         "--time-budget", "300")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["accuracy"]["max_drop"] == pytest.approx(0.05) and data["sensitivity"]
    assert "sensitivity: each layer alone" in result.output and "held-back samples" in result.output


def test_the_path_between_two_allocations_moves_one_layer_one_candidate_at_a_time():
    from onnx_cp.ranks.drop import _path

    rng = np.random.default_rng(0)
    for _ in range(50):
        options = []
        for _layer in range(int(rng.integers(1, 5))):
            costs = sorted(rng.uniform(1, 10, int(rng.integers(2, 8))).tolist())
            options.append((costs + [20.0], [float(d) for d in np.sort(rng.uniform(0, 5, len(costs)))[::-1]] + [0.0]))
        start = [int(rng.integers(0, len(c))) for c, _ in options]
        end = [int(rng.integers(0, len(c))) for c, _ in options]
        path = [start] + _path(start, end, options) + [end]
        for a, b in zip(path, path[1:]):
            changed = [i for i in range(len(a)) if a[i] != b[i]]
            assert len(changed) <= 1 and (a != b or start == end)
        for i, (costs, _) in enumerate(options):  # each layer's cost moves monotonically toward its end
            seen = [costs[p[i]] for p in path]
            assert seen == sorted(seen) or seen == sorted(seen, reverse=True)


def test_nodes_that_read_one_weight_are_scored_together_in_one_sensitivity_row(tmp_path, monkeypatch):
    # an RNN unrolled into one Gemm per step reads one weight at every step: x -> W -> W -> V
    from builders import float_model
    from onnx_cp.ranks import damages

    # the proxy's sensitivity runs the model once per weight too, with all its readers rewritten
    spliced = []
    monkeypatch.setattr(damages, "splice", lambda model, replacements: spliced.append(
        sorted(r.site.name for r in replacements)) or splice(model, replacements))
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    # nearly rank 16, so that a low rank keeps the outputs
    w = (rng.standard_normal((512, 16)) @ rng.standard_normal((16, 512)) / 90
         + rng.standard_normal((512, 512)) / 2000).astype(np.float32)
    v = (rng.standard_normal((512, 10)) / 20).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h1"], name="step1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W"], ["h2"], name="step2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "V"], ["y"], name="head")]
    model = float_model("steps", nodes, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
                        (None, 512), (None, 10))
    x = rng.standard_normal((80, 512)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    shapes = {"x": (1, 512)}
    result = rewrite_with_report(model, max_drop=0.5, metric="agreement", data=str(tmp_path / "val.npz"),
                                 decomposition="auto", candidates=3, calib_count=4, max_iter=10, recover=False, jobs=1,
                                 input_shapes=shapes, calib_samples=24, timer=FakeTiming(model, shapes))
    rows = {r["layer"]: r for r in result.report.sensitivity}
    assert set(rows) == {"step1", "head"}
    assert list(rows["step1"]["nodes"]) == ["step1", "step2"] and not rows["head"]["nodes"]
    assert spliced == [["step1", "step2"], ["head"]]
    # and the search allocates them as one: both steps at one rank, or both kept
    ranks = {l.node: l.rank for l in result.report.rewritten}
    assert ("step1" in ranks) == ("step2" in ranks) and ranks.get("step1") == ranks.get("step2")
    onnx.checker.check_model(result.model, full_check=True)


def test_a_time_budget_spent_before_the_search_fails_in_one_line_naming_the_step(tmp_path, val):
    out = tmp_path / "out.onnx"
    result = cli_rewrite(tmp_path, "--max-drop", "5", "--data", val, "--max-iter", "10", "--no-recover",
                         "--input-shape", "input=1x1x28x28", "--time-budget", "0.001")
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]  # the progress lines come before it
    assert line.startswith("onnx-cp: error: --time-budget 0.001 ran out in the steps before the latency probe")
    assert "no model within the drop was found" in line
    assert not out.exists()


def test_of_the_allocations_within_the_drop_the_fastest_timed_is_written_not_the_fastest_predicted(val):
    # a machine where a model runs the faster the more weights it holds: the latency model (from
    # the per-layer times) and the whole-model timing disagree on which allocation runs fastest
    model = onnx.load(MODELS / "mnist_cnn.onnx")

    class MoreWeightsFaster(FakeTiming):
        def whole(self, models):
            return [1e6 / sum(int(np.prod(t.dims)) for t in m.graph.initializer) for m in models]

    result = rewrite_with_report(model, max_drop=0.05, data=val, candidates=3, calib_count=4, **QUICK,
                                 timer=MoreWeightsFaster(model, SHAPES))
    trials = result.report.rank_selection["trials"]
    timed = [t for t in trials if t["measured_speedup"] is not None]
    assert len(timed) >= 2
    written, = [t for t in timed if t["predicted_speedup"] == pytest.approx(result.report.rank_selection["predicted_speedup"])]
    assert written["measured_speedup"] == max(t["measured_speedup"] for t in timed)
    fastest_predicted = max(timed, key=lambda t: t["predicted_speedup"])
    assert written["measured_speedup"] > fastest_predicted["measured_speedup"]  # this timing disagrees
    assert any("the fastest timed ran" in n for n in result.report.notes)


def test_tied_layers_are_one_knapsack_unit_whose_options_sum_theirs():
    from onnx_cp.ranks.drop import _spread, _unit_options

    options = [([1.0, 2.0, 4.0], [0.5, 0.1, 0.0]), ([3.0, 9.0], [0.2, 0.0]), ([1.0, 3.0, 4.0], [0.3, 0.2, 0.0])]
    units = [[0, 2], [1]]
    merged = _unit_options(options, units)
    assert [list(map(float, c)) for c, _ in merged] == [[2.0, 5.0, 8.0], [3.0, 9.0]]
    assert [float(x) for _, d in merged for x in d] == pytest.approx([0.8, 0.3, 0.0, 0.2, 0.0])
    assert _spread([1, 0], units) == [1, 0, 1]


def test_layers_that_read_one_weight_with_the_same_candidates_are_tied():
    from types import SimpleNamespace

    from onnx_cp.ranks.drop import _tied

    def layer(key, weight, ranks):
        return SimpleNamespace(site=SimpleNamespace(key=key, weight_source=weight), ranks=ranks,
                               kinds=["svd"] * len(ranks))

    auto = [layer("a", "W", [4, 8]), layer("v", "V", [4, 8]), layer("b", "W", [4, 8]), layer("c", "W", [4]),
            layer("n", None, [4, 8])]
    assert _tied(SimpleNamespace(auto=auto)) == [[0, 2], [3], [1], [4]]


def test_a_layer_that_can_save_a_large_share_of_the_time_is_scored_alone_on_the_whole_choosing_part():
    from types import SimpleNamespace

    from onnx_cp.ranks.drop import STAKE, _sensitivity

    def layer(key, weight, before, cheapest):
        return SimpleNamespace(site=SimpleNamespace(key=key, name=key, weight_source=weight), ranks=[4, 8, 16],
                               costs=[cheapest, (cheapest + before) / 2, before * 0.9], before=before, middle=1,
                               errors=[0.8, 0.5, 0.05], weight=1.0, kind=lambda k: "svd", label=lambda k: 8)

    # 10 ms in all: "small" can save 0.5 ms (5%), the two steps reading W 2 x 1.5 ms together (30%)
    auto = [layer("small", None, 1.0, 0.5), layer("step1", "W", 2.0, 0.5), layer("step2", "W", 2.0, 0.5)]
    problem = SimpleNamespace(auto=auto, total=10.0, plan=SimpleNamespace(notes=[]))
    assert 0.05 < STAKE <= 0.3

    class Recording:
        """A scorer on ``samples`` rows that finds ``drop`` for any allocation and records them."""

        def __init__(self, samples, drop):
            self.calls, self.drop = [], drop
            self.target = SimpleNamespace(split=SimpleNamespace(selection={"x": np.zeros((samples, 1))}))

        def __call__(self, picks, full=False):
            self.calls.append(list(picks))
            return 0.9 - self.drop, self.drop

    quick, whole = Recording(512, 0.02), Recording(1400, 0.01)
    rows = _sensitivity(problem, quick, whole, None, None)
    assert quick.calls == [[1, 3, 3]] and whole.calls == [[3, 1, 1]]
    assert [(r.layer, r.drop) for r in rows] == [("small", 0.02), ("step1", 0.01)]
    assert auto[1].weight == auto[2].weight == pytest.approx(0.01 / 0.5)  # drop / the two layers' squared errors


def test_a_sensitivity_row_scores_the_faster_candidate_whose_error_is_nearest_the_scored_error():
    from types import SimpleNamespace

    from onnx_cp.ranks.drop import SCORED_ERROR, _scored

    def layer(ranks, costs, errors, before=1.0):
        return SimpleNamespace(ranks=ranks, costs=costs, errors=errors, before=before, middle=len(ranks) // 2)

    # auto's candidates, CP's then Tucker-2's: the middle index is Tucker-2's lowest rank, at an error
    # where the metric has saturated; the row scores CP's top rank instead
    mixed = layer(["cp:2", "cp:8", "cp:80", "cp:128", "t:1x1", "t:8x8", "t:32x32", "t:112x112"],
                  [0.10, 0.11, 0.22, 0.29, 0.10, 0.12, 0.20, 0.93], [0.72, 0.65, 0.35, 0.27, 0.74, 0.66, 0.41, 0.08])
    assert mixed.middle == 4 and _scored(mixed) == 3
    # a candidate no faster than the layer is never scored, however near its error
    slow = layer([1, 7, 48], [0.5, 0.6, 1.2], [0.76, 0.5, 0.25])
    assert _scored(slow) == 1
    # nothing faster: the middle candidate
    assert _scored(layer([8, 16], [1.5, 2.0], [0.3, 0.1])) == 1
    assert 0.1 < SCORED_ERROR < 0.5


def test_a_layer_with_no_candidate_faster_than_it_gets_a_row_without_a_scoring():
    from types import SimpleNamespace

    from onnx_cp.ranks.drop import _sensitivity
    from onnx_cp.report import sensitivity_table

    def layer(key, costs, before):
        return SimpleNamespace(site=SimpleNamespace(key=key, name=key, weight_source=None), ranks=[4, 8],
                               costs=costs, before=before, middle=1, errors=[0.5, 0.2], weight=1.0,
                               kind=lambda k: "svd", label=lambda k: 8)

    auto = [layer("slow", [1.2, 1.5], 1.0), layer("fast", [0.4, 0.7], 1.0)]
    problem = SimpleNamespace(auto=auto, total=10.0, plan=SimpleNamespace(notes=[]))
    calls = []

    def scorer(picks, full=False):
        calls.append(list(picks))
        return 0.89, 0.01

    scorer.target = SimpleNamespace(split=SimpleNamespace(selection={"x": np.zeros((512, 1))}))
    rows = _sensitivity(problem, scorer, scorer, None, None)
    assert calls == [[2, 1]]  # only "fast" is scored, at its candidate of error 0.2
    assert [(r.layer, r.drop) for r in rows] == [("slow", None), ("fast", 0.01)]
    assert rows[0].ms_saved == pytest.approx(-0.5) and auto[0].weight == 1.0
    table = sensitivity_table([dict(r.to_dict(), decision="kept") for r in rows])
    assert table.rows[0][4] == "-" and table.rows[1][4] == "0.01"

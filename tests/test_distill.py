"""--calib's whole-model distillation: the rewritten layers train together on the model's outputs,
the graph stays as spliced, and the result is kept only where the held-back error drops.

Tiny models built in code, seeded data, onnxruntime as the judge.
"""
from __future__ import annotations

import functools
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import run
from onnx_cp.calibrate import session
from onnx_cp.calibrate.distill import transplant
from onnx_cp.config import RewriteConfig
from onnx_cp.errors import OnnxCpError
from onnx_cp.rewrite import rewrite_with_report
from test_calibrate import correlated, two_convs

pytest.importorskip("onnx2torch")


def _config(path, **kw) -> RewriteConfig:
    return RewriteConfig(ranks=(4,), realize="cp4", jobs=1, measure=False, calib=str(path), calib_samples=60,
                         recover_steps=40, max_iter=40, **kw)


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(11)
    model = two_convs(rng)
    x = correlated(rng, 60, 12, 10)
    np.save(tmp_path / "calib.npy", x)
    return model, x, tmp_path / "calib.npy"


def _held_back_error(model, original, x) -> float:
    held = x[48:]  # 60 samples: the last 12 are held back
    want = run(original, {"x": held})[0]
    return float(np.linalg.norm(run(model, {"x": held})[0] - want) / np.linalg.norm(want))


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_distillation_lowers_the_held_back_error_and_keeps_the_spliced_graph(case, monkeypatch):
    model, x, path = case
    # A tiny, far-off rank-4 model moves slowly at the default rate: a faster one shows the same path.
    monkeypatch.setattr(session, "DistillOptions", functools.partial(session.DistillOptions, lr=1e-2))
    recovered = rewrite_with_report(model, _config(path, distill_epochs=0))
    distilled = rewrite_with_report(model, _config(path, distill_epochs=20))
    onnx.checker.check_model(distilled.model, full_check=True)
    entry = distilled.report.calibration["distillation"]
    assert entry["kept"] and entry["epochs"] == 20 and entry["steps"] == 20 * 3, entry  # 48 samples, batches of 16
    before, after = _held_back_error(recovered.model, model, x), _held_back_error(distilled.model, model, x)
    assert after < 0.95 * before, (before, after)
    assert entry["output_error_before"] == pytest.approx(before, rel=1e-4)
    assert entry["output_error_after"] == pytest.approx(after, rel=1e-4)
    assert distilled.report.calibration["output_error"] == pytest.approx(after, rel=1e-4)
    # the training-sample error beside it: the first 12 training samples, as many as are held back
    want = run(model, {"x": x[:12]})[0]
    training = float(np.linalg.norm(run(distilled.model, {"x": x[:12]})[0] - want) / np.linalg.norm(want))
    assert entry["output_error_training"] == pytest.approx(training, rel=1e-4)
    # Same nodes, same initializers; only the rewritten layers' values moved.
    assert [(n.op_type, n.name, list(n.input)) for n in distilled.model.graph.node] == \
           [(n.op_type, n.name, list(n.input)) for n in recovered.model.graph.node]
    old, new = _weights(recovered.model), _weights(distilled.model)
    assert old.keys() == new.keys()
    moved = {name for name in old if not np.array_equal(old[name], new[name])}
    assert moved and all("/cp/" in name for name in moved), moved


def test_the_calibration_line_gives_the_training_samples_error_beside_the_held_back_one():
    from onnx_cp.report import describe_distillation

    entry = {"epochs": 10, "steps": 260, "seconds": 105.3, "output_error_before": 0.2450,
             "output_error_after": 0.2251, "kept": True, "note": None, "output_error_training": 0.1994}
    assert describe_distillation(entry) == ("whole-model distillation 10 epoch(s), 260 steps, 105.3 s: held-back "
                                            "error 0.2450 -> 0.2251 (0.1994 on training samples)")
    entry["output_error_training"] = None  # a report written before the figure existed
    assert describe_distillation(entry).endswith("0.2450 -> 0.2251")


def test_distillation_that_raises_the_held_back_error_is_not_kept(case, monkeypatch):
    model, x, path = case
    recovered = rewrite_with_report(model, _config(path, distill_epochs=0))
    monkeypatch.setattr(session, "DistillOptions", functools.partial(session.DistillOptions, lr=3.0))
    result = rewrite_with_report(model, _config(path, distill_epochs=3))
    entry = result.report.calibration["distillation"]
    assert not entry["kept"] and entry["output_error_after"] > entry["output_error_before"], entry
    assert any("distillation not kept" in str(n) for n in result.report.notes)
    assert result.model.SerializeToString() == recovered.model.SerializeToString()


def test_distillation_whose_training_loss_climbs_stops_after_its_first_epoch(case, monkeypatch):
    model, x, path = case
    monkeypatch.setattr(session, "DistillOptions", functools.partial(session.DistillOptions, lr=3.0))
    result = rewrite_with_report(model, _config(path, distill_epochs=8))
    entry = result.report.calibration["distillation"]
    assert entry["epochs"] == 1 and entry["steps"] == 3 and not entry["kept"], entry  # 48 samples, batches of 16
    assert "training stopped after epoch 1, whose mean loss" in entry["note"], entry["note"]


def test_distillation_stops_on_an_epoch_mean_past_ten_times_the_first_batch_loss(monkeypatch):
    """The rule alone, on the losses a diverging run reports: each epoch's running mean."""
    from onnx_cp.calibrate import distill
    from onnx_cp.finetune.report import Step

    seen = []

    def fake_finetune(student, batches, *, callback, **kwargs):
        for epoch, losses in enumerate([[1.0, 5.0, 9.9], [3.0, 8.0, 10.1], [20.0, 20.0, 20.0]], start=1):
            for k, loss in enumerate(losses, start=1):
                seen.append((epoch, k))
                if callback(Step("train", epoch, 3, k, 3, loss, None, None, 1e-4)):
                    raise StopIteration

    monkeypatch.setattr("onnx_cp.finetune.finetune_with_report", fake_finetune)
    with pytest.raises(StopIteration):
        distill.distill_layers(None, onnx.ModelProto(), [], np.zeros((48, 1), np.float32),
                               distill.DistillOptions(epochs=3, max_time=None))
    assert seen[-1] == (2, 3)  # epoch 1 ends at 9.9 < 10 x 1.0; epoch 2 at 10.1 stops


def test_distillation_that_cannot_run_leaves_the_recovered_model_and_says_why(case, monkeypatch):
    model, x, path = case
    recovered = rewrite_with_report(model, _config(path, distill_epochs=0))

    def missing(*args, **kwargs):
        raise OnnxCpError("fine-tuning needs the 'finetune' extra: pip install 'onnx-cp[finetune]'")

    monkeypatch.setattr(session, "distill_layers", missing)
    result = rewrite_with_report(model, _config(path))
    assert result.model.SerializeToString() == recovered.model.SerializeToString()
    assert result.report.calibration["distillation"]["note"].startswith("not run: fine-tuning needs")
    assert any("onnx-cp[finetune]" in str(n) for n in result.report.notes)


def test_a_rewrite_without_torch_notes_the_missing_extra(case, monkeypatch):
    model, _, path = case
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as without the extra
    result = rewrite_with_report(model, _config(path))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.calibration["distillation"]["note"].startswith("not run: fine-tuning needs the 'finetune' extra")


def test_no_recover_and_zero_epochs_skip_distillation(case):
    model, _, path = case
    for config in (_config(path, recover=False), _config(path, distill_epochs=0)):
        assert rewrite_with_report(model, config).report.calibration["distillation"] is None


def test_transplant_sets_named_values_of_the_same_shape_only():
    model = two_convs(np.random.default_rng(0))
    w1 = np.full((12, 12, 3, 3), 0.5, np.float32)
    out = transplant(model, {"W1": w1, "W2": np.zeros((3, 3), np.float32), "nothing": np.ones(2, np.float32)})
    got = _weights(out)
    assert np.array_equal(got["W1"], w1)
    assert np.array_equal(got["W2"], _weights(model)["W2"])  # wrong shape: left alone
    assert "nothing" not in got and not np.array_equal(_weights(model)["W1"], w1)  # the input is not modified


@pytest.mark.parametrize("value, problem", [(-1, "distill_epochs"), (1.5, "distill_epochs")])
def test_bad_distill_epochs_are_refused(value, problem):
    with pytest.raises(OnnxCpError, match=problem):
        RewriteConfig(ranks=(4,), distill_epochs=value)


def test_distill_time_must_be_positive():
    with pytest.raises(OnnxCpError, match="distill_time"):
        RewriteConfig(ranks=(4,), distill_time=0)


def test_the_command_refuses_distill_options_without_calib(tmp_path):
    from click.testing import CliRunner

    from onnx_cp.cli import cli

    model = tmp_path / "m.onnx"
    onnx.save(two_convs(np.random.default_rng(0)), model)
    result = CliRunner().invoke(cli, ["rewrite", str(model), "--rank", "4", "--distill-epochs", "2",
                                      "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2, result.output
    assert "--distill-epochs is used by --calib" in result.output and len(result.output.strip().splitlines()) == 1


def test_max_drop_writes_the_model_its_search_measured_undistilled_unless_epochs_are_given(case, monkeypatch):
    from golden_timing import FakeTiming
    from onnx_cp.calibrate import layerwise

    model, x, path = case
    # recovered as the search's trials recover: no block step, the layers they trained reused
    trained, real = [], layerwise._recover_one
    monkeypatch.setattr(layerwise, "_refine_block", lambda *a, **k: pytest.fail("the block step ran"))
    monkeypatch.setattr(layerwise, "_recover_one", lambda *a, **k: trained.append(a[1].site.name) or real(*a, **k))
    at_recovery, recover = [], session.Calibration.recover
    monkeypatch.setattr(session.Calibration, "recover",
                        lambda self, *a, **k: at_recovery.append(len(trained)) or recover(self, *a, **k))
    np.savez(path.parent / "val.npz", x=np.concatenate([x, x[::-1] + 0.1]))  # 120: both parts of 20 and more
    shapes = {"x": (1, 12, 10, 10)}

    def calibration(**more) -> dict:
        result = rewrite_with_report(model, max_drop=0.5, metric="agreement", data=str(path.parent / "val.npz"),
                                     calib=str(path), calib_samples=60, recover_steps=10, max_iter=10, jobs=1,
                                     candidates=3, calib_count=4, input_shapes=shapes,
                                     timer=FakeTiming(model, shapes), **more)
        assert result.report.rewritten
        return result.report.calibration

    entry = calibration()
    assert entry["distillation"] is None and entry["recovered_layers"] >= 1
    assert at_recovery == [len(trained)] and trained  # the search trained; the written model's layers are its own
    assert calibration(distill_epochs=1)["distillation"]["epochs"] == 1
    assert calibration(distill_epochs=1)["distillation"]["epochs"] == 1

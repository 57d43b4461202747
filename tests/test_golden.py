"""What a rewrite decides, pinned: ranks, forms, factors (through the model's outputs) and the report's
figures on the shipped models and a pretrained detector, with timing computed (tests/golden_timing.py)
so that every decision is deterministic.

The expected values live in tests/golden/<case>.json. They were written by the code before a
restructuring of the rewrite's middle layer and must hold after it; regenerate them only for a
change that is meant to alter a decision, and say which:

    ONNX_CP_WRITE_GOLDEN=1 python -m pytest -q tests/test_golden.py
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from golden_timing import FakeTiming
from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
WRITE = os.environ.get("ONNX_CP_WRITE_GOLDEN") == "1"
REL, ABS = 2e-3, 1e-6
# The sampled outputs are compared as vectors: a rewrite recovered from calibration data gives a
# few small outputs 0.5% apart between an Intel Xeon (AVX-512, AMX) and an AMD EPYC (AVX-512, no
# AMX), 0.3% of the sample's norm; a changed rank or fit moves them by far more.
OUTPUTS_REL = 1e-2
# Deterministic fits: iterations bound them, never a clock (no degeneracy correction, whose budget
# is a time; recovery bounded by steps alone; no whole-model distillation, which trains on every
# core under a time budget: tests/test_distill.py checks it).
FIT = dict(max_iter=20, stabilize="never", jobs=1, recover_steps=20, recover_time=None, calib_samples=96,
           distill_epochs=0)

MODELS = {
    "mnist": (ROOT / "models" / "mnist_cnn.onnx", {"input": (1, 1, 28, 28)}),
    "charcnn": (ROOT / "models" / "charcnn36.onnx", {"input": (1, 1, 24, 24)}),
    "nudenet": (ROOT / "assets" / "nudenet_320n.onnx", {"images": (1, 3, 160, 160)}),
}
# case -> (model, RewriteConfig keywords, RankSelection keywords or None, with calibration data)
CASES = {
    "mnist_rank8": ("mnist", {"ranks": (8,)}, None, False),
    "mnist_target3": ("mnist", {}, {"target_speedup": 3.0}, False),
    "mnist_target3_calib": ("mnist", {}, {"target_speedup": 3.0}, True),
    "mnist_max_error": ("mnist", {}, {"max_error": 0.45}, False),
    "mnist_auto_target2": ("mnist", {"decomposition": "auto"}, {"target_speedup": 2.0}, False),
    "charcnn_rank_quarter_calib": ("charcnn", {"ranks": (0.25,)}, None, True),
    "charcnn_auto_rank": ("charcnn", {"ranks": (16,), "decomposition": "auto", "exclude": ("*features.9*",)}, None,
                          False),
    "charcnn_auto_rank_calib": ("charcnn", {"ranks": (16,), "decomposition": "auto", "exclude": ("*features.9*",)},
                                None, True),
    "nudenet_rank_quarter": ("nudenet", {"ranks": (0.25,)}, None, False),
    "nudenet_auto_target2": ("nudenet", {"decomposition": "auto"}, {"target_speedup": 2.0}, False),
}


@pytest.fixture
def timing():
    """Makes the FakeTiming the rewrite is given (its one timing injection point)."""
    return FakeTiming


def _calibration(model_name: str, path: Path) -> str:
    """Real inputs of the model: the shipped test images (the detector gets seeded noise)."""
    if model_name == "mnist":
        x = np.load(ROOT / "models" / "mnist_test.npz")["x"][:96]
    elif model_name == "charcnn":
        x = np.load(ROOT / "models" / "charcnn36_test.npz")["x"][:96]
    else:
        x = np.random.default_rng(0).random((16, 3, 160, 160), dtype=np.float32)
    np.save(path, x.astype(np.float32))
    return str(path)


def _run(case: str, tmp_path: Path, timing):
    model_name, config_kw, selection_kw, calib = CASES[case]
    path, shapes = MODELS[model_name]
    if not path.exists():
        pytest.skip(f"{path.name} is fetched by tools/fetch_assets.py")
    model = onnx.load(str(path))
    fake = timing(model, shapes)
    selection = None
    if selection_kw is not None:
        selection = RankSelection(**selection_kw, candidates=3, calib_count=4)
    config = RewriteConfig(selection=selection, input_shapes=shapes,
                           calib=_calibration(model_name, tmp_path / "calib.npy") if calib else None,
                           **FIT, **config_kw)
    result = rewrite_with_report(model, config, timer=fake)
    return model, shapes, result


def _outputs(model: onnx.ModelProto, shapes) -> list[np.ndarray]:
    name, shape = next(iter(shapes.items()))
    x = np.random.default_rng(7).random((2, *shape[1:]), dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})


def _sample(array: np.ndarray, count: int = 24) -> list[float]:
    flat = np.asarray(array, np.float64).ravel()
    picks = np.random.default_rng(0).choice(flat.size, size=min(count, flat.size), replace=False)
    return [float(v) for v in flat[np.sort(picks)]]


LAYER_FIELDS = ("node", "status", "realization", "decomposition", "rank", "rel_error", "macs_after",
                "params_after", "proxy_error", "cost", "output_error_before", "output_error_after")
SELECTION_FIELDS = ("mode", "cost", "total_before", "fixed", "target_total", "budget", "total_after",
                    "predicted_speedup", "output_error", "final_output_error", "greedy_output_error",
                    "decompositions", "latency_scale", "kept_round", "max_error")
CALIBRATION_FIELDS = ("samples", "held_back", "recovered_layers", "output_error_fitted", "output_error")


def summary(model, shapes, result) -> dict:
    """The decisions and figures a restructuring must keep."""
    report = result.report.to_dict()
    layers = [{k: layer[k] for k in LAYER_FIELDS} for layer in report["layers"] if layer["status"] != "ineligible"]
    selection = report["rank_selection"] or {}
    out = {
        "layers": layers,
        "rank_selection": {k: selection[k] for k in SELECTION_FIELDS if k in selection},
        "rounds": [r["measured_speedup"] for r in selection.get("rounds", [])],
        "speedup": (report["speed"] or {}).get("speedup"),
        "calibration": {k: report["calibration"][k] for k in CALIBRATION_FIELDS} if report["calibration"] else None,
        "outputs": [_sample(o) for o in _outputs(result.model, shapes)],
        "output_norms": [float(np.linalg.norm(o)) for o in _outputs(result.model, shapes)],
    }
    return json.loads(json.dumps(out))  # tuples as lists, as read back


def _close(got, want, where: str) -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else got} != {sorted(want)}"]
        return [m for k in want for m in _close(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got} != {want}"]
        return [m for i, (g, w) in enumerate(zip(got, want)) for m in _close(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        ok = math.isclose(got, want, rel_tol=REL, abs_tol=ABS) or (math.isnan(got) and math.isnan(want))
        return [] if ok else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


@pytest.mark.parametrize("case", list(CASES))
def test_a_rewrite_decides_as_pinned(case, tmp_path, timing):
    model, shapes, result = _run(case, tmp_path, timing)
    onnx.checker.check_model(result.model, full_check=True)
    got = summary(model, shapes, result)
    file = GOLDEN / f"{case}.json"
    if WRITE:
        GOLDEN.mkdir(exist_ok=True)
        file.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(file.read_text())
    got_outputs, want_outputs = got.pop("outputs"), want.pop("outputs")
    problems = _close(got, want, case) + [
        f"{case}.outputs[{i}]: {g} != {w}" for i, (g, w) in enumerate(zip(got_outputs, want_outputs))
        if len(g) != len(w) or np.linalg.norm(np.subtract(g, w)) > OUTPUTS_REL * np.linalg.norm(w)]
    assert len(got_outputs) == len(want_outputs) and not problems, "\n".join(problems[:20])

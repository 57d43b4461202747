"""Bad inputs and hostile environments: one clear line and the right exit code, never a
traceback; no file damaged, lost or half-written; nothing read outside the model's folder."""
import errno
import json
import os
import stat
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from builders import conv_model, grouped_cp_kernel, relative_difference, run
from onnx_cp import OnnxCpError, RewriteConfig, load_model, rewrite_with_report, save_model
from onnx_cp import model_io, solver
from onnx_cp.cli import cli
from onnx_cp.sites import find_convs

# Small, quick fits; the solver is patched through onnx_cp.solver.cp_als in some tests.
FAST = ("--method", "als", "--max-iter", "5", "--realize", "cp4", "-q")
F32 = TensorProto.FLOAT


def invoke(*args):
    """Run the CLI as a user would; a traceback shows up as ``result.exception``."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback escaped: {result.exception!r}\n{result.output}"
    return result


def one_line_error(result, code, *words):
    """The run failed with ``code`` and exactly one ``onnx-cp: error:`` line holding ``words``."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-cp: error:"), result.output
    assert result.stderr.strip() == lines[0] and not result.stdout.strip(), "the error goes to stderr"
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (symlinks by target), to prove nothing changed."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path)] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path)] = path.read_bytes()
    return files


def exact_model(tmp_path, name="model.onnx", rank=3, **kwargs):
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 16, 8, 3, 3, 1, rank)
    bias = rng.standard_normal(16).astype(np.float32)
    model = conv_model((1, 8, 12, 12), weight.astype(np.float32), bias, pads=[1, 1, 1, 1], **kwargs)
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.fixture
def model_path(tmp_path):
    return exact_model(tmp_path)


def x_like(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- files that are not models ---------------------------------------------------------------

def _valid_bytes():
    rng = np.random.default_rng(0)
    return conv_model((1, 4, 8, 8), rng.standard_normal((8, 4, 3, 3)).astype(np.float32)).SerializeToString()


def _fails_checker():
    model = onnx.load_from_string(_valid_bytes())
    model.graph.node[0].input[0] = "nowhere"  # reads a tensor nobody produces
    return model.SerializeToString()


BAD_FILES = {
    "missing": (None, 2, "no such file"),
    "directory": ("dir", 2, "is a directory"),
    "empty": (b"", 2, "empty"),
    "random bytes": (np.random.default_rng(3).bytes(512), 1, "not a readable ONNX model"),
    "truncated protobuf": (_valid_bytes()[:-7], 1, "not a readable ONNX model"),
    "a tensor, not a model": (numpy_helper.from_array(np.ones((2, 2), np.float32), "t").SerializeToString(),
                              1, "ONNX model"),
    "a graph, not a model": (onnx.load_from_string(_valid_bytes()).graph.SerializeToString(), 1,
                             "not an ONNX model"),
    "fails the checker": (_fails_checker(), 1, "fails the ONNX checker"),
    "fifo": ("fifo", 2, "not a regular file"),
    "dangling symlink": ("dangling", 2, "no such file"),
}


def _make_bad(path: Path, content):
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content == "dangling":
        path.symlink_to(path.parent / "gone.onnx")
    elif content is not None:
        path.write_bytes(content)


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", [["inspect"], ["rewrite", "--rank", "4", "-o", "OUT", *FAST]])
def test_bad_model_files_give_one_line_naming_the_file(tmp_path, kind, command):
    content, code, message = BAD_FILES[kind]
    path = tmp_path / "bad.onnx"
    _make_bad(path, content)
    before = snapshot(tmp_path)
    args = [str(tmp_path / "out.onnx") if a == "OUT" else a for a in command]
    result = invoke(args[0], path, *args[1:])
    one_line_error(result, code, path, message)
    assert snapshot(tmp_path) == before, "nothing written, nothing changed"


@pytest.mark.parametrize("kind", ["missing", "empty", "random bytes", "truncated protobuf",
                                  "a graph, not a model", "fails the checker"])
def test_bad_model_files_raise_onnx_cp_error_in_the_api(tmp_path, kind):
    content, code, message = BAD_FILES[kind]
    path = tmp_path / "bad.onnx"
    _make_bad(path, content)
    with pytest.raises(OnnxCpError, match=message) as info:
        rewrite_with_report(path, RewriteConfig(ranks=(4,)))
    assert info.value.usage == (code == 2)


def test_a_model_proto_that_fails_the_checker_is_the_inputs_fault():
    model = onnx.load_from_string(_fails_checker())
    with pytest.raises(OnnxCpError, match="fails the ONNX checker"):
        rewrite_with_report(model, RewriteConfig(ranks=(4,)))


# ---- external data ---------------------------------------------------------------------------

def _external_model(folder: Path, location="model.data") -> Path:
    """model.onnx whose weight lives in ``location`` (relative to folder), written by onnx."""
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 16, 8, 3, 3, 1, 3)
    model = conv_model((1, 8, 12, 12), weight.astype(np.float32), pads=[1, 1, 1, 1])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, location=location,
                    size_threshold=0, all_tensors_to_one_file=True)
    return folder / "model.onnx"


def _point_weight_at(path: Path, location: str, **entries):
    model = onnx.load(path, load_external_data=False)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    for entry in weight.external_data:
        if entry.key == "location":
            entry.value = location
        elif entry.key in entries:
            entry.value = str(entries.pop(entry.key))
    for key, value in entries.items():
        weight.external_data.add(key=key, value=str(value))
    path.write_bytes(model.SerializeToString())


def test_external_data_model_rewrites(tmp_path):
    path = _external_model(tmp_path / "m")
    out = tmp_path / "out.onnx"
    before = snapshot(tmp_path / "m")
    result = invoke("rewrite", path, "--rank", "3", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "m") == before
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.fixture
def secret(tmp_path):
    """A file outside the model's folder that must never be opened."""
    path = tmp_path / "secret" / "passwd"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 4096)
    return path


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "symlinked_folder"])
def test_external_data_outside_the_folder_is_refused_before_anything_is_read(tmp_path, secret, where,
                                                                            monkeypatch):
    path = _external_model(tmp_path / "models" / "m")
    folder = path.parent
    if where == "dotdot":
        location = "../../../etc/passwd"
    elif where == "absolute":
        location = str(secret)
    elif where == "symlink":
        (folder / "link.data").symlink_to(secret)
        location = "link.data"
    else:
        (folder / "sub").symlink_to(secret.parent, target_is_directory=True)
        location = "sub/passwd"
    _point_weight_at(path, location)
    reads = []
    monkeypatch.setattr(model_io, "_read_external", lambda *a: reads.append(a))
    before = snapshot(tmp_path)
    for command in (["inspect"], ["rewrite", "--rank", "3", "-o", tmp_path / "out.onnx", *FAST]):
        result = invoke(command[0], path, *command[1:])
        one_line_error(result, 1, path, "'W'", "refusing to read it")
    with pytest.raises(OnnxCpError, match="refusing"):
        load_model(path)
    assert reads == [], "no external data may be read once one location is refused"
    assert snapshot(tmp_path) == before


def test_a_refused_location_stops_the_reading_of_every_tensor(tmp_path, secret, monkeypatch):
    # Two external tensors: the first is fine, the second leaves the folder; neither is read.
    path = _external_model(tmp_path / "m")
    model = onnx.load(path, load_external_data=False)
    extra = numpy_helper.from_array(np.zeros(4, np.float32), "unused")
    extra.data_location = TensorProto.EXTERNAL
    extra.external_data.add(key="location", value="../secret/passwd")
    model.graph.initializer.append(extra)
    path.write_bytes(model.SerializeToString())
    reads = []
    monkeypatch.setattr(model_io, "_read_external", lambda *a: reads.append(a))
    with pytest.raises(OnnxCpError, match="'unused'.*outside the model's folder"):
        load_model(path)
    assert reads == []


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("truncated", "truncated"),
    ("offset past the end", "truncated"),
    ("length short of the dims", "need"),
    ("a folder", "not a regular file"),
])
def test_missing_or_truncated_external_data_gives_one_line(tmp_path, damage, message):
    path = _external_model(tmp_path / "m")
    data = path.parent / "model.data"
    if damage == "missing":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "offset past the end":
        _point_weight_at(path, "model.data", offset=10**6)
    elif damage == "length short of the dims":
        _point_weight_at(path, "model.data", length=16)
    else:
        data.unlink()
        data.mkdir()
    before = snapshot(tmp_path)
    result = invoke("rewrite", path, "--rank", "3", "-o", tmp_path / "out.onnx", *FAST)
    one_line_error(result, 1, path, "'W'", message)
    assert snapshot(tmp_path) == before


# ---- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("rank, message", [
    (0, "at least 1"), (-3, "at least 1"), ("abc", "not a number"), ("nan", "(0, 1)"),
    ("inf", "(0, 1)"), ("", "not a number"), ("=4", "empty layer pattern"), (True, "not a number"),
])
def test_bad_ranks_are_usage_errors_in_the_api(rank, message):
    with pytest.raises(OnnxCpError, match=message) as info:
        RewriteConfig(ranks=(rank,))
    assert info.value.usage


@pytest.mark.parametrize("args, message", [
    (["--rank", "nan"], "(0, 1)"),
    (["--rank", "conv=abc"], "not a number"),
    (["--rank", "4", "--exclude", "nothing*"], "matches no convolution"),
    (["--rank", "4", "--max-iter", "0"], "--max-iter"),
    (["--rank", "4", "--max-iter", "many"], "--max-iter"),
    (["--rank", "4", "--realize", "cp5"], "--realize"),
    (["--rank", "4", "--input-shape", "nosuch=1x8x12x12"], "nosuch"),
    (["--rank", "4", "--bogus-option"], "--bogus-option"),
    (["--rank"], "--rank"),
    ([], "--rank"),
])
def test_bad_arguments_are_one_line_usage_errors(model_path, tmp_path, args, message):
    out = tmp_path / "out.onnx"
    before = snapshot(tmp_path)
    result = invoke("rewrite", model_path, "-o", out, *args)
    one_line_error(result, 2, message)
    assert snapshot(tmp_path) == before


def test_unknown_command_and_missing_output_are_one_line(model_path):
    one_line_error(invoke("rewirte", model_path), 2, "rewirte")
    one_line_error(invoke("rewrite", model_path, "--rank", "3"), 2, "--output")


def test_pattern_matching_no_layer_is_refused_in_the_api(model_path):
    with pytest.raises(OnnxCpError, match="matches no convolution") as info:
        rewrite_with_report(model_path, RewriteConfig(ranks=(4,), layers=("nothing*",)))
    assert info.value.usage


def test_bad_input_shapes_in_the_api_are_usage_errors(model_path):
    for shape in [(1, 8, 0, 12), (1, 8, -1, 12), ("a", 8, 12, 12)]:
        with pytest.raises(OnnxCpError, match="positive") as info:
            rewrite_with_report(model_path, RewriteConfig(ranks=(4,), input_shapes={"x": shape}))
        assert info.value.usage


# ---- --debug and unexpected failures ---------------------------------------------------------

def test_debug_shows_the_traceback_only_when_asked(model_path, tmp_path):
    missing = tmp_path / "missing.onnx"
    one_line_error(invoke("rewrite", missing, "--rank", "3", "-o", tmp_path / "o.onnx"), 2, missing)
    result = CliRunner().invoke(cli, ["--debug", "rewrite", str(missing), "--rank", "3", "-o",
                                      str(tmp_path / "o.onnx")])
    assert isinstance(result.exception, OnnxCpError)


def test_a_bug_is_one_line_that_says_how_to_get_the_traceback(model_path, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(solver, "cp_als", broken)
    out = tmp_path / "out.onnx"
    result = invoke("rewrite", model_path, "--rank", "3", "-o", out, *FAST)
    one_line_error(result, 1, "internal error", "ZeroDivisionError", "--debug")
    assert not out.exists()
    result = CliRunner().invoke(cli, ["--debug", "rewrite", str(model_path), "--rank", "3", "-o", str(out),
                                      *FAST])
    assert isinstance(result.exception, ZeroDivisionError)


# ---- weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights_are_skipped_with_a_reason(tmp_path, bad):
    weight = x_like((8, 4, 3, 3))
    weight[1, 2, 0, 1] = bad
    path = tmp_path / "m.onnx"
    onnx.save(conv_model((1, 4, 8, 8), weight), path)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke("rewrite", path, "--rank", "3", "-o", out, "--report", report, *FAST)
    assert result.exit_code == 0, result.output
    layer, = json.loads(report.read_text())["layers"]
    assert layer["status"] == "ineligible" and "NaN/Inf" in layer["reason"]
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Conv"]


def test_an_all_zero_kernel_rewrites_to_zero_factors(tmp_path):
    path = tmp_path / "m.onnx"
    bias = np.arange(8, dtype=np.float32)
    onnx.save(conv_model((1, 4, 8, 8), np.zeros((8, 4, 3, 3), np.float32), bias, pads=[1, 1, 1, 1]), path)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    for method in ("als", "nls"):
        result = invoke("rewrite", path, "--rank", "3", "-o", out, "--report", report, "--method", method,
                        "--max-iter", "5", "--realize", "cp4", "-q")
        assert result.exit_code == 0, result.output
        layer, = json.loads(report.read_text())["layers"]
        assert layer["status"] == "rewritten" and layer["rel_error"] == 0.0
        fast = onnx.load(out)
        onnx.checker.check_model(fast, full_check=True)
        weights = [numpy_helper.to_array(t) for t in fast.graph.initializer if t.name != "B"]
        assert len(weights) == 4 and all(not w.any() for w in weights), "zero factors, no NaN"
        y = run(fast, {"x": x_like((1, 4, 8, 8))})[0]
        assert np.array_equal(y, np.broadcast_to(bias[None, :, None, None], y.shape))


def test_a_grouped_conv_with_one_zero_group_has_a_finite_error():
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 8, 4, 3, 3, 2, 2)
    weight[:4] = 0
    model = conv_model((1, 8, 8, 8), weight.astype(np.float32), group=2, pads=[1, 1, 1, 1])
    result = rewrite_with_report(model, RewriteConfig(ranks=(2,), method="als", max_iter=50, realize="cp4",
                                                      cap_rank=False))
    layer, = result.report.layers
    assert layer.status == "rewritten" and np.isfinite(layer.rel_error) and layer.rel_error < 1e-3
    x = x_like((1, 8, 8, 8))
    assert relative_difference(run(model, {"x": x})[0], run(result.model, {"x": x})[0]) < 1e-3


@pytest.mark.parametrize("shape, rank", [((1, 1, 1, 2), 2), ((2, 1, 1, 3), 3), ((1, 1, 2, 2), 3)])
def test_als_at_a_rank_above_a_small_kernels_other_modes(shape, rank):
    # A 2-output, 1-input 1x3 Conv at rank 3 with --no-rank-cap: tensorly's own SVD start
    # would give too few columns here, so cp_als starts from cp_nls's padded SVD start.
    weight = x_like(shape)
    model = conv_model((1, shape[1], 4, 4), weight)
    result = rewrite_with_report(model, RewriteConfig(ranks=(rank,), method="als", max_iter=5,
                                                      cap_rank=False, realize="cp4"))
    assert result.report.layers[0].status == "rewritten"


def test_outputs_get_the_usual_file_mode_not_mkstemps_0600(model_path, tmp_path):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "new.onnx"
        assert invoke("rewrite", model_path, "--rank", "3", "-o", out, *FAST).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        existing = tmp_path / "existing.onnx"
        existing.write_bytes(b"old")
        existing.chmod(0o640)
        assert invoke("rewrite", model_path, "--rank", "3", "-o", existing, *FAST).exit_code == 0
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640, "replacing a file keeps its mode"
    finally:
        os.umask(umask)


def test_float16_weights_rewrite_and_run(tmp_path):
    path = exact_model(tmp_path)
    model = onnx.load(path)
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for t in half.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(half, path)
    out = tmp_path / "out.onnx"
    result = invoke("rewrite", path, "--rank", "3", "-o", out, "--method", "nls", "--max-iter", "50",
                    "--realize", "cp4", "-q")
    assert result.exit_code == 0, result.output
    fast = onnx.load(out)
    assert {t.data_type for t in fast.graph.initializer} == {TensorProto.FLOAT16}
    x = x_like((1, 8, 12, 12), dtype=np.float16)
    assert relative_difference(run(half, {"x": x})[0], run(fast, {"x": x})[0]) < 1e-2


def test_bfloat16_weights_rewrite_to_bfloat16_factors(tmp_path):
    # Conv takes bfloat16 from opset 22; onnxruntime has no CPU kernel for it, so the
    # reference evaluator judges, and auto realization falls back to cp4 with a note.
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 8, 4, 3, 3, 1, 2)
    model = conv_model((1, 4, 6, 6), weight.astype(np.float32), pads=[1, 1, 1, 1], opset=22)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight.astype(ml_dtypes.bfloat16), "W"))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    onnx.checker.check_model(model, full_check=True)
    path, out, report = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    result = invoke("rewrite", path, "--rank", "2", "-o", out, "--report", report, "--method", "nls",
                    "--max-iter", "100", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["layers"][0]["status"] == "rewritten" and data["layers"][0]["realization"] == "cp4"
    assert any("cp4" in note for note in data["notes"])
    fast = onnx.load(out)
    onnx.checker.check_model(fast, full_check=True)
    assert {t.data_type for t in fast.graph.initializer} == {TensorProto.BFLOAT16}
    x = x_like((1, 4, 6, 6)).astype(ml_dtypes.bfloat16)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    actual = ReferenceEvaluator(fast).run(None, {"x": x})[0]
    assert relative_difference(expected, actual) < 3e-2  # bfloat16 keeps 8 bits of mantissa


def test_weight_data_that_does_not_match_its_dims_is_refused(tmp_path):
    model = conv_model((1, 4, 8, 8), x_like((8, 4, 3, 3)), weight_via="constant")
    tensor = model.graph.node[0].attribute[0].t
    tensor.raw_data = tensor.raw_data[:-8]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for source in (path, model):
        with pytest.raises(OnnxCpError, match="fails the ONNX checker.*too small"):
            rewrite_with_report(source, RewriteConfig(ranks=(3,), realize="cp4"))
    # Past the checker (load_model(check=False)), discovery still refuses to decode it.
    site, = find_convs(model, {})
    assert not site.eligible and "need" in site.reason and "damaged" in site.reason


# ---- convolutions that are skipped, not errors -----------------------------------------------

def _qdq_model():
    """x -> Q -> DQ -> Conv(W = DQ(W_int8)) -> y, as onnxruntime's static quantization writes it."""
    w = np.random.default_rng(0).integers(-100, 100, (8, 4, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "W_q"), numpy_helper.from_array(np.float32(0.02), "w_scale"),
             numpy_helper.from_array(np.int8(0), "w_zero"), numpy_helper.from_array(np.float32(0.05), "x_scale"),
             numpy_helper.from_array(np.int8(0), "x_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["W_q", "w_scale", "w_zero"], ["W"], name="dq_w"),
             helper.make_node("Conv", ["xd", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", F32, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _branch(name, weight):
    conv = helper.make_node("Conv", ["x", weight], [f"{name}_y"], name=f"{name}_conv", pads=[1, 1, 1, 1])
    return helper.make_graph([conv], name, [], [helper.make_tensor_value_info(f"{name}_y", F32, [1, 4, 6, 6])])


def _control_flow_model():
    """A top-level Conv, then If(cond){Conv}{Conv} and Loop(2){Conv}, all on the same x."""
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 4, 4, 3, 3, 1, 2)
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W"),
             numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array(2, np.int64), "trips")]
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Conv", ["x", "W"], ["ly"], name="loop_conv", pads=[1, 1, 1, 1])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("ly", F32, [1, 4, 6, 6])])
    nodes = [helper.make_node("Conv", ["x", "W"], ["top"], name="top_conv", pads=[1, 1, 1, 1]),
             helper.make_node("If", ["cond"], ["branch"], name="if",
                              then_branch=_branch("then", "W"), else_branch=_branch("else", "W")),
             helper.make_node("Loop", ["trips", "cond"], ["looped"], name="loop", body=body)]
    graph = helper.make_graph(nodes, "cf", [helper.make_tensor_value_info("x", F32, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("top", F32, [1, 4, 6, 6]),
                               helper.make_tensor_value_info("branch", F32, [1, 4, 6, 6]),
                               helper.make_tensor_value_info("looped", F32, [2, 1, 4, 6, 6])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _other_conv_model(kind):
    rng = np.random.default_rng(0)
    inits, inputs_ = [], []
    if kind == "ConvTranspose":
        inits = [numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "W")]
        node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="k")
        x, y = (1, 4, 6, 6), (F32, [1, 8, 8, 8])
    elif kind in ("Conv1D", "Conv3D"):
        dims = (3,) if kind == "Conv1D" else (3, 3, 3)
        inits = [numpy_helper.from_array(rng.standard_normal((8, 4, *dims)).astype(np.float32), "W")]
        node = helper.make_node("Conv", ["x", "W"], ["y"], name="k")
        x = (1, 4, *(6,) * len(dims))
        y = (F32, [1, 8, *(4,) * len(dims)])
    elif kind == "ConvInteger":
        inits = [numpy_helper.from_array(rng.integers(0, 9, (8, 4, 3, 3)).astype(np.uint8), "W")]
        node = helper.make_node("ConvInteger", ["xq", "W"], ["y"], name="k")
        x, y = None, (TensorProto.INT32, [1, 8, 4, 4])
    else:  # QLinearConv
        inits = [numpy_helper.from_array(rng.integers(0, 9, (8, 4, 3, 3)).astype(np.uint8), "W"),
                 numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")]
        node = helper.make_node("QLinearConv", ["xq", "s", "z", "W", "s", "z", "s", "z"], ["y"], name="k")
        x, y = None, (TensorProto.UINT8, [1, 8, 4, 4])
    if x is None:
        inputs_ = [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4, 6, 6])]
    else:
        inputs_ = [helper.make_tensor_value_info("x", F32, list(x))]
    graph = helper.make_graph([node], "g", inputs_, [helper.make_tensor_value_info("y", *y)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("kind, reason", [
    ("ConvTranspose", "ConvTranspose is not rewritten"), ("QLinearConv", "QLinearConv is not rewritten"),
    ("ConvInteger", "ConvInteger is not rewritten"), ("Conv1D", "1-D Conv"), ("Conv3D", "3-D Conv"),
])
def test_other_convolutions_are_skipped_with_a_reason(tmp_path, kind, reason):
    model = _other_conv_model(kind)
    onnx.checker.check_model(model, full_check=True)
    path, out, report = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    listed = json.loads(invoke("inspect", path, "--json").output)["layers"]
    assert [(l["status"], reason in l["reason"]) for l in listed] == [("ineligible", True)]
    result = invoke("rewrite", path, "--rank", "3", "-o", out, "--report", report, *FAST)
    assert result.exit_code == 0, result.output
    layer, = json.loads(report.read_text())["layers"]
    assert layer["status"] == "ineligible" and reason in layer["reason"]
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_a_quantized_conv_is_skipped_with_a_reason(tmp_path):
    model = _qdq_model()
    onnx.checker.check_model(model, full_check=True)
    result = rewrite_with_report(model, RewriteConfig(ranks=(3,), realize="cp4"))
    layer, = result.report.layers
    assert layer.status == "ineligible" and "DequantizeLinear" in layer.reason and "quantize" in layer.reason
    x = x_like((1, 4, 8, 8))
    assert np.array_equal(run(model, {"x": x})[0], run(result.model, {"x": x})[0])


def test_convs_inside_if_and_loop_are_skipped_and_the_top_one_rewritten():
    model = _control_flow_model()
    onnx.checker.check_model(model, full_check=True)
    result = rewrite_with_report(model, RewriteConfig(ranks=(2,), method="als", max_iter=50, realize="cp4",
                                                      cap_rank=False))
    status = {l.node: (l.status, l.reason) for l in result.report.layers}
    assert status["top_conv"][0] == "rewritten"
    inner = {k: v for k, v in status.items() if k != "top_conv"}
    assert len(inner) == 3 and all(s == "ineligible" and "subgraph" in r for s, r in inner.values()), inner
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert "W" in {t.name for t in out.graph.initializer}, "the subgraphs still read the shared weight"
    x = x_like((1, 4, 6, 6))
    for a, b in zip(run(model, {"x": x}), run(out, {"x": x})):
        assert relative_difference(a, b) < 1e-3


# ---- shapes ----------------------------------------------------------------------------------

def test_dynamic_shapes_rewrite_and_run_at_other_sizes(tmp_path):
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 8, 4, 3, 3, 1, 2)
    model = conv_model(("N", 4, "H", "W"), weight.astype(np.float32), pads=[1, 1, 1, 1], strides=[2, 1])
    result = rewrite_with_report(model, RewriteConfig(ranks=(2,), method="als", max_iter=50, realize="cp4",
                                                      cap_rank=False))
    assert result.report.rewritten and any("dynamic" in n for n in result.report.notes)
    onnx.checker.check_model(result.model, full_check=True)
    for shape in [(1, 4, 5, 7), (3, 4, 16, 9)]:
        x = x_like(shape)
        assert relative_difference(run(model, {"x": x})[0], run(result.model, {"x": x})[0]) < 1e-3


def test_batch_larger_than_one(tmp_path):
    path = tmp_path / "m.onnx"
    rng = np.random.default_rng(0)
    weight, _ = grouped_cp_kernel(rng, 8, 4, 3, 3, 1, 2)
    onnx.save(conv_model((4, 4, 9, 9), weight.astype(np.float32), dilations=[2, 2], pads=[2, 1, 2, 1]), path)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = invoke("rewrite", path, "--rank", "2", "--no-rank-cap", "-o", out, "--report", report,
                    "--method", "als", "--max-iter", "50", "--realize", "cp4", "-q")
    assert result.exit_code == 0, result.output
    layer, = json.loads(report.read_text())["layers"]
    assert layer["in_shape"][0] == 4 and layer["macs_before"] == 4 * 8 * 4 * 9 * 7 * 9
    x = x_like((4, 4, 9, 9))
    assert relative_difference(run(onnx.load(path), {"x": x})[0], run(onnx.load(out), {"x": x})[0]) < 1e-3


def test_an_input_with_the_wrong_channel_count_is_skipped_with_a_reason():
    model = conv_model((1, 4, 8, 8), x_like((8, 4, 3, 3)))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    result = rewrite_with_report(model, RewriteConfig(ranks=(3,), realize="cp4"))
    layer, = result.report.layers
    assert layer.status == "ineligible" and "5 channels" in layer.reason


# ---- outputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target, message", [
    ("no/such/folder/out.onnx", "does not exist"),
    ("a_dir", "is a directory"),
    ("fifo", "not a regular file"),
    ("model.onnx", "--overwrite"),
    ("model.data", "external data"),
])
def test_bad_outputs_are_refused_before_any_work(tmp_path, monkeypatch, target, message):
    path = _external_model(tmp_path)
    (tmp_path / "a_dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    fits = []
    monkeypatch.setattr(solver, "cp_als", lambda *a, **k: fits.append(a))
    before = snapshot(tmp_path)
    result = invoke("rewrite", path, "--rank", "3", "-o", tmp_path / target, *FAST)
    one_line_error(result, 2, message)
    assert fits == [] and snapshot(tmp_path) == before
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def _full_disk(monkeypatch, after=100):
    """Every write to disk stops with ENOSPC once ``after`` bytes went through."""
    written = [0]
    real = model_io._write

    def write(fh, data):
        room = after - written[0]
        if len(data) > room:
            if room > 0:
                real(fh, memoryview(data)[:room])
                written[0] += room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)
        written[0] += len(data)

    monkeypatch.setattr(model_io, "_write", write)


@pytest.mark.parametrize("large", [False, True])
def test_a_full_disk_leaves_the_old_output_and_no_temporary_file(model_path, tmp_path, monkeypatch, large):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    if large:  # take the path of a model over 2 GiB: tensors into out.onnx.data
        monkeypatch.setattr(model_io, "_EXTERNAL_FROM", 1000)
        monkeypatch.setattr(model_io, "_EXTERNAL_MIN_BYTES", 16)
        (tmp_path / "out.onnx.data").write_bytes(b"previous data")
    _full_disk(monkeypatch)
    before = snapshot(tmp_path)
    result = invoke("rewrite", model_path, "--rank", "3", "-o", out, *FAST)
    one_line_error(result, 1, out, "No space left on device")
    assert snapshot(tmp_path) == before


def test_an_unwritable_folder_is_one_line(model_path, tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(model_io.tempfile, "mkstemp", denied)
    before = snapshot(tmp_path)
    result = invoke("rewrite", model_path, "--rank", "3", "-o", tmp_path / "out.onnx", *FAST)
    one_line_error(result, 1, "Permission denied")
    assert snapshot(tmp_path) == before


def test_ctrl_c_during_the_fit_writes_nothing(model_path, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(solver, "cp_als", interrupted)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    before = snapshot(tmp_path)
    result = invoke("rewrite", model_path, "--rank", "3", "-o", out, *FAST)
    assert result.exit_code == 130
    assert result.output.strip().splitlines() == ["onnx-cp: interrupted; no output was written"]
    assert snapshot(tmp_path) == before


def test_ctrl_c_while_saving_leaves_the_old_output(model_path, tmp_path, monkeypatch):
    def interrupted(fh, data):
        fh.write(memoryview(data)[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io, "_write", interrupted)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    before = snapshot(tmp_path)
    result = invoke("rewrite", model_path, "--rank", "3", "-o", out, *FAST)
    assert result.exit_code == 130 and len(result.output.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_ctrl_c_in_the_api_propagates_and_leaves_the_model_alone(model_path):
    model = onnx.load(model_path)
    original = model.SerializeToString()

    def progress(layer, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rewrite_with_report(model, RewriteConfig(ranks=(3,), realize="cp4"), progress=progress)
    assert model.SerializeToString() == original


def test_the_input_is_byte_identical_after_every_command(model_path, tmp_path):
    before = model_path.read_bytes()
    invoke("inspect", model_path)
    invoke("inspect", model_path, "--json")
    invoke("rewrite", model_path, "--rank", "3", "-o", tmp_path / "a.onnx", *FAST)
    invoke("rewrite", model_path, "--rank", "99", "-o", tmp_path / "b.onnx", "--layers", "nope", *FAST)
    invoke("bench", model_path, "--runs", "1", "--warmup", "0")
    assert model_path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".") or p.endswith(".tmp")]


# Reports (rewrite --report, bench --json/--markdown/--html) are checked before the work and
# written atomically; they may never replace an input model.


def test_a_report_path_equal_to_the_input_is_refused(model_path, tmp_path):
    before = model_path.read_bytes()
    result = invoke("rewrite", model_path, "--rank", "3", "-o", tmp_path / "out.onnx", "--report", model_path,
                    *FAST)
    assert model_path.read_bytes() == before
    one_line_error(result, 2, "input model")


def test_a_report_in_a_missing_folder_is_refused_before_writing_the_model(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    result = invoke("rewrite", model_path, "--rank", "3", "-o", out, "--report", tmp_path / "no" / "r.json",
                    *FAST)
    one_line_error(result, 2, "does not exist")
    assert not out.exists()


def test_a_bench_report_never_replaces_a_model(model_path):
    before = model_path.read_bytes()
    result = invoke("bench", model_path, "--runs", "1", "--warmup", "0", "--json", model_path)
    assert model_path.read_bytes() == before
    one_line_error(result, 2, "input model")


def test_save_text_refuses_the_input_and_writes_atomically(model_path, tmp_path):
    before = model_path.read_bytes()
    with pytest.raises(OnnxCpError, match="input model") as info:
        model_io.save_text("{}", model_path, protect=[tmp_path / "other.onnx", model_path])
    assert info.value.usage and model_path.read_bytes() == before
    report = model_io.save_text('{"a": 1}', tmp_path / "r.json", protect=model_path)
    assert json.loads(report.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "r.json"]


def test_save_model_with_external_data_leaves_the_model_in_memory_alone(model_path, tmp_path, monkeypatch):
    model = onnx.load(model_path)
    original = model.SerializeToString()
    monkeypatch.setattr(model_io, "_EXTERNAL_FROM", 1000)
    out = save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == original
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "model.onnx"]
    header = onnx.load(out, load_external_data=False)
    assert {e.value for t in header.graph.initializer for e in t.external_data if e.key == "location"} \
        == {"big.onnx.data"}
    loaded = load_model(out)
    x = x_like((1, 8, 12, 12))
    assert np.array_equal(run(model, {"x": x})[0], run(loaded, {"x": x})[0])


# ---- large models ----------------------------------------------------------------------------

def write_external_model(folder: Path, total_bytes: int, tensor_bytes: int = 256 * 2**20) -> Path:
    """big.onnx + big.onnx.data holding ``total_bytes`` of tables, written in chunks (the test
    never holds the model in memory), and one small Conv of exact CP rank 3:

        x[1,8,8,8] -> Conv(16x8x3x3) -> + mean(table_i[0]) for each table -> y[1,16,8,8]
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    weight, _ = grouped_cp_kernel(rng, 16, 8, 3, 3, 1, 3)
    inits = [numpy_helper.from_array(weight.astype(np.float32), "conv.weight"),
             numpy_helper.from_array(np.array([0], np.int64), "row0")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    cols, current, offset, i = 1024, "c", 0, 0
    with open(folder / "big.onnx.data", "wb") as fh:
        while offset < total_bytes:
            rows = max(1, min(tensor_bytes, total_bytes - offset) // (4 * cols))
            for start in range(0, rows, 4096):
                fh.write(rng.standard_normal((min(4096, rows - start), cols)).astype(np.float32).tobytes())
            table = TensorProto(name=f"table{i}", data_type=F32, dims=[rows, cols],
                                data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "big.onnx.data"), ("offset", offset), ("length", rows * cols * 4)):
                table.external_data.add(key=key, value=str(value))
            inits.append(table)
            nodes += [helper.make_node("Gather", [f"table{i}", "row0"], [f"g{i}"]),
                      helper.make_node("ReduceMean", [f"g{i}"], [f"m{i}"], keepdims=0),
                      helper.make_node("Add", [current, f"m{i}"], [f"a{i}"])]
            current, offset, i = f"a{i}", offset + rows * cols * 4, i + 1
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", F32, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, [1, 16, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (folder / "big.onnx").write_bytes(model.SerializeToString())
    return folder / "big.onnx"


def run_path(path: Path, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


EXACT_CLI = ("--rank", "3", "--no-rank-cap", "--method", "nls", "--max-iter", "30", "--realize", "cp4", "-q")


@pytest.mark.parametrize("external_output", [False, True])
def test_a_20_mb_external_data_model_rewrites_loads_and_runs(tmp_path, monkeypatch, external_output):
    path = write_external_model(tmp_path / "in", 20 * 2**20, tensor_bytes=8 * 2**20)
    out = tmp_path / "out" / "fast.onnx"
    out.parent.mkdir()
    if external_output:  # take the path of models over 2 GiB: weights go to fast.onnx.data
        monkeypatch.setattr(model_io, "_EXTERNAL_FROM", 2**20)
    before = snapshot(tmp_path / "in")
    result = invoke("rewrite", path, "-o", out, *EXACT_CLI)
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "in") == before
    expected_files = ["fast.onnx", "fast.onnx.data"] if external_output else ["fast.onnx"]
    assert sorted(os.listdir(out.parent)) == expected_files
    assert out.stat().st_size < 2**20 if external_output else out.stat().st_size > 20 * 2**20
    onnx.checker.check_model(str(out), full_check=True)
    assert [n.op_type for n in load_model(out).graph.node][:4] == ["Conv"] * 4
    x = {"x": x_like((1, 8, 8, 8))}
    assert relative_difference(run_path(path, x)[0], run_path(out, x)[0]) < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ONNX_CP_SLOW") != "1", reason="set ONNX_CP_SLOW=1 to run (2.2 GB model)")
def test_a_model_over_2_gib_rewrites_within_twice_its_size_in_memory(tmp_path):
    """A 2.2 GB model with external data: the rewrite's peak memory (the CLI in a subprocess,
    its ru_maxrss) stays within twice the model's size, and the result, saved with external
    data, loads and runs. Needs about 5 GB of free disk and 8 GB of memory; skipped unless
    ONNX_CP_SLOW=1 (CI runs ``python -m pytest -q``, which must stay fast)."""
    import subprocess
    import sys

    size = int(2.2 * 2**30)
    path = write_external_model(tmp_path / "in", size)
    out = tmp_path / "out" / "fast.onnx"
    out.parent.mkdir()
    probe = tmp_path / "maxrss"
    script = ("import resource, sys\nfrom onnx_cp.cli import main\ntry:\n    main(sys.argv[2:])\nfinally:\n"
              "    open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")
    done = subprocess.run([sys.executable, "-c", script, str(probe), "rewrite", str(path), "-o", str(out),
                           *EXACT_CLI], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak = int(probe.read_text()) * 1024  # ru_maxrss is in KiB on Linux
    assert peak < 2 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    assert sorted(os.listdir(out.parent)) == ["fast.onnx", "fast.onnx.data"]
    onnx.checker.check_model(str(out))
    x = {"x": x_like((1, 8, 8, 8))}
    assert relative_difference(run_path(path, x)[0], run_path(out, x)[0]) < 1e-4

"""Fuzzing the command line: Conv attributes (valid or not), small random graphs, and
byte-level mutations of valid models.

Whatever the input, ``onnx-cp`` never ends in a traceback: it exits 0 having written a model
that passes the ONNX checker (and runs like the original when the original runs), or exits
1 or 2 with one ``onnx-cp: error:`` line. Derandomized, so every run sees the same examples;
fits are small (5 iterations, cp4) to keep the suite well under a minute.
"""
import random
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from builders import conv_model, relative_difference
from onnx_cp import RewriteConfig, rewrite_with_report
from onnx_cp.cli import cli
from onnx_cp.decompositions.cp_solver import KernelFit

# The default solver, few iterations: the fuzz judges robustness, not fit quality.
FAST = ["--method", "nls", "--max-iter", "5", "--realize", "cp4", "-q"]
F32 = TensorProto.FLOAT


def fuzz_settings(n):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def invoke(args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exception!r}\n{result.output}"
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnx-cp: error: "), result.output
    return result


def session(model):
    """An onnxruntime session, or None where onnxruntime refuses the model."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:
        return None


def feeds_for(sess, rng):
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in inp.shape]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def rewrite_and_judge(model, args, *, must_succeed=False, tolerance=None):
    """Run ``onnx-cp rewrite`` on ``model``; judge what it wrote against the original."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model.SerializeToString())
        before = src.read_bytes()
        result = invoke(["rewrite", src, "-o", out, *args])
        assert src.read_bytes() == before, "the input is never modified"
        files = sorted(p.name for p in Path(tmp).iterdir())
        assert files == (["in.onnx", "out.onnx"] if result.exit_code == 0 else ["in.onnx"]), files
        if must_succeed:
            assert result.exit_code == 0, result.output
        if result.exit_code:
            return None
        written = onnx.load(out)
    full = _passes_full_check(model)
    onnx.checker.check_model(written, full_check=full)
    original = session(model)
    if original is None:
        return written
    rewritten = session(written)
    assert rewritten is not None, "the original runs in onnxruntime, so the rewrite must"
    feeds = feeds_for(original, np.random.default_rng(0))
    try:
        expected = original.run(None, feeds)
    except Exception:
        return written  # the original fails at run time on these shapes: nothing to compare
    actual = rewritten.run(None, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        assert np.all(np.isfinite(a)) or not np.all(np.isfinite(e))
        if tolerance is not None:
            assert relative_difference(e, a) < tolerance
    return written


def _passes_full_check(model):
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except Exception:
        return False


# ---- one Conv, attributes valid or not ----------------------------------------------------

@st.composite
def conv_cases(draw):
    """A Conv whose attributes are usually valid and sometimes not (kernel larger than the
    input, zero stride, negative pads, a group that does not divide, NaN weights...)."""
    broken = draw(st.booleans()) and draw(st.booleans())  # about a quarter of the cases
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    group = draw(st.sampled_from([1, 1, 2]))
    in_pg, out_pg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    attrs = {"strides": [draw(st.integers(1, 3)), draw(st.integers(1, 3))],
             "dilations": [draw(st.integers(1, 2)), draw(st.integers(1, 2))]}
    pad_mode = draw(st.sampled_from(["pads", "pads", "none", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if pad_mode == "pads":
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(4)]
    elif pad_mode != "none":
        attrs["auto_pad"] = pad_mode
        if pad_mode.startswith("SAME"):
            attrs["dilations"] = [1, 1]
    if group > 1:
        attrs["group"] = group
    if draw(st.booleans()):
        attrs["kernel_shape"] = [kh, kw]
    h = (kh - 1) * attrs["dilations"][0] + 1 + draw(st.integers(0, 5))
    w = (kw - 1) * attrs["dilations"][1] + 1 + draw(st.integers(0, 5))
    batch = draw(st.sampled_from([1, 1, 2, "N"]))
    weight_shape = [out_pg * group, in_pg, kh, kw]
    special = None
    if broken:
        damage = draw(st.sampled_from(["stride0", "dilation0", "negative_pad", "group", "kernel_shape",
                                       "too_small", "nan", "zero", "channels"]))
        if damage == "stride0":
            attrs["strides"] = [0, 1]
        elif damage == "dilation0":
            attrs["dilations"] = [1, 0]
        elif damage == "negative_pad":
            attrs.pop("auto_pad", None)
            attrs["pads"] = [-1, 0, 0, 0]
        elif damage == "group":
            attrs["group"] = 3 if out_pg * group % 3 else 5
        elif damage == "kernel_shape":
            attrs["kernel_shape"] = [kh + 1, kw]
        elif damage == "too_small":
            attrs.pop("auto_pad", None)
            attrs["pads"] = [0, 0, 0, 0]
            h = max(1, (kh - 1) * attrs["dilations"][0])
        elif damage == "channels":
            in_pg += 1  # the input has group * (in_pg + 1) channels, the weight expects fewer
        special = damage
    return dict(attrs=attrs, weight_shape=weight_shape, x=(batch, in_pg * group, h, w), special=special,
                dtype=draw(st.sampled_from([np.float32, np.float32, np.float16])),
                bias=draw(st.booleans()), via=draw(st.sampled_from(["initializer", "constant", "identity"])),
                rank=draw(st.sampled_from(["1", "2", "5", "0.3", "0.9"])), cap=draw(st.booleans()),
                seed=draw(st.integers(0, 1000)))


@fuzz_settings(250)
@given(conv_cases())
def test_fuzz_conv_attributes(case):
    rng = np.random.default_rng(case["seed"])
    weight = rng.standard_normal(case["weight_shape"]).astype(case["dtype"])
    if case["special"] == "nan":
        weight.flat[0] = np.nan
    elif case["special"] == "zero":
        weight[:] = 0
    bias = rng.standard_normal(weight.shape[0]).astype(case["dtype"]) if case["bias"] else None
    model = conv_model(case["x"], weight, bias, weight_via=case["via"], **case["attrs"])
    args = ["--rank", case["rank"], *FAST] + ([] if case["cap"] else ["--no-rank-cap"])
    rewrite_and_judge(model, args, must_succeed=case["special"] in (None, "nan", "zero"))


# ---- small random graphs -----------------------------------------------------------------

@st.composite
def graphs(draw):
    """A chain of 1-4 blocks over an NCHW tensor: Conv (any weight source, sometimes sharing a
    weight), Relu, MaxPool, a residual Conv + Add, or two Conv branches + Concat."""
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(4, 9)), draw(st.integers(4, 9))
    nodes, inits = [], []
    names = iter(f"t{i}" for i in range(100))
    current = "x"
    x_info = helper.make_tensor_value_info("x", F32, [draw(st.sampled_from([1, 2, "N"])), c, h, w])
    shared = {}

    def conv(inp, c_in, c_out, k, pad, stride=1):
        out = next(names)
        reuse = (c_out, c_in, k) in shared and draw(st.booleans())
        if reuse:
            w_name = shared[(c_out, c_in, k)]
        else:
            w_name = f"w_{out}"
            tensor = numpy_helper.from_array(
                (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32), w_name)
            if draw(st.booleans()):
                inits.append(tensor)
            else:
                nodes.append(helper.make_node("Constant", [], [w_name], value=tensor))
            shared[(c_out, c_in, k)] = w_name
        inputs = [inp, w_name]
        if draw(st.booleans()):
            inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), f"b_{out}"))
            inputs.append(f"b_{out}")
        nodes.append(helper.make_node("Conv", inputs, [out], name=f"conv_{out}", pads=[pad] * 4,
                                      strides=[stride, stride]))
        return out

    for _ in range(draw(st.integers(1, 4))):
        block = draw(st.sampled_from(["conv", "conv", "relu", "pool", "residual", "concat"]))
        if block == "conv":
            k = draw(st.sampled_from([1, 3, 3, 5]))
            stride = draw(st.sampled_from([1, 1, 2]))
            c_out = draw(st.integers(1, 6))
            current = conv(current, c, c_out, k, k // 2, stride)
            c, h, w = c_out, (h - 1) // stride + 1, (w - 1) // stride + 1
        elif block == "relu":
            out = next(names)
            nodes.append(helper.make_node("Relu", [current], [out]))
            current = out
        elif block == "pool" and h >= 2 and w >= 2:
            out = next(names)
            nodes.append(helper.make_node("MaxPool", [current], [out], kernel_shape=[2, 2], strides=[2, 2]))
            current, h, w = out, h // 2, w // 2
        elif block == "residual":
            branch = conv(current, c, c, 3, 1)
            out = next(names)
            nodes.append(helper.make_node("Add", [current, branch], [out]))
            current = out
        elif block == "concat":
            a, b = conv(current, c, 2, 3, 1), conv(current, c, 3, 3, 1)
            out = next(names)
            nodes.append(helper.make_node("Concat", [a, b], [out], axis=1))
            current, c = out, 5
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(nodes, "random", [x_info], [helper.make_tensor_value_info("y", F32, [None] * 4)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(st.sampled_from([11, 13, 17])))])
    model.ir_version = 8
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    layers = draw(st.lists(st.sampled_from(convs), max_size=2, unique=True)) if convs else []
    return model, layers, draw(st.sampled_from(["1", "3", "0.5"]))


@fuzz_settings(120)
@given(graphs())
def test_fuzz_random_graphs(case):
    model, layers, rank = case
    onnx.checker.check_model(model, full_check=True)
    args = ["--rank", rank, *FAST]
    for layer in layers:
        args += ["--layers", layer]
    rewrite_and_judge(model, args, must_succeed=True)


def exact_fitter(kernel, rank, seed):
    """An exact CP model of any kernel: one rank-one term per slice along its largest mode,
    padded with zero terms to ``rank`` (which must be large enough)."""
    dims = kernel.shape
    big = int(np.argmax(dims))
    others = [m for m in range(4) if m != big]
    need = int(np.prod([dims[m] for m in others]))
    assert rank >= need, (rank, need)
    factors = [np.zeros((d, rank)) for d in dims]
    for r, index in enumerate(np.ndindex(*[dims[m] for m in others])):
        for m, i in zip(others, index):
            factors[m][i, r] = 1.0
        slicer = [slice(None)] * 4
        for m, i in zip(others, index):
            slicer[m] = i
        factors[big][:, r] = kernel[tuple(slicer)]
    return KernelFit(tuple(factors), 0.0, 1.0, 1.0, False, 0.0)


@fuzz_settings(100)
@given(graphs())
def test_fuzz_random_graphs_are_reproduced_exactly_at_full_rank(case):
    # Every rewritten Conv computes what it did: splicing, shared and Constant weights,
    # residuals and branches keep the network's function.
    model, layers, _ = case
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return
    result = rewrite_with_report(model, RewriteConfig(ranks=(200,), cap_rank=False, realize="cp4",
                                                      layers=tuple(layers)), fitter=exact_fitter)
    onnx.checker.check_model(result.model, full_check=True)
    sess_a, sess_b = session(model), session(result.model)
    feeds = feeds_for(sess_a, np.random.default_rng(1))
    for a, b in zip(sess_a.run(None, feeds), sess_b.run(None, feeds)):
        assert relative_difference(a, b) < 1e-4


# ---- byte-level mutations of valid models -------------------------------------------------

def _seed_models():
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    plain = conv_model((1, 4, 6, 6), w(6, 4, 3, 3), w(6), pads=[1, 1, 1, 1])
    grouped = conv_model((2, 4, 7, 5), w(4, 2, 3, 2), group=2, strides=[2, 1], dilations=[1, 2])
    identity = conv_model(("N", 3, 5, 5), w(4, 3, 2, 2), weight_via="identity", auto_pad="SAME_UPPER")
    return [m.SerializeToString() for m in (plain, grouped, identity)]


SEEDS = _seed_models()


@st.composite
def mutations(draw):
    """1-3 byte edits of a seed model. Positions come from a seeded uniform generator:
    hypothesis alone favours offset 0, the header, where every edit breaks the parse."""
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    uniform = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "flip", "byte", "byte", "truncate", "insert", "delete",
                                     "duplicate"]))
        if not data:
            break
        at = uniform.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << uniform.randrange(8)
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, uniform.randrange(256)]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + uniform.randint(1, 8)]
        else:
            end = min(len(data), at + uniform.randint(1, 32))
            data[at:at] = data[at:end]
    return bytes(data)


@fuzz_settings(500)
@given(mutations(), st.sampled_from(["inspect", "rewrite"]))
def test_fuzz_mutated_model_bytes(data, command):
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(data)
        if command == "inspect":
            event(f"inspect exit {invoke(['inspect', src, '--json']).exit_code}")
            assert src.read_bytes() == data
            return
        result = invoke(["rewrite", src, "--rank", "2", "-o", out, *FAST])
        event(f"rewrite exit {result.exit_code}")
        assert src.read_bytes() == data
        assert sorted(p.name for p in Path(tmp).iterdir()) == (["in.onnx", "out.onnx"] if result.exit_code == 0
                                                                else ["in.onnx"])
        if result.exit_code == 0:
            onnx.checker.check_model(onnx.load(out))

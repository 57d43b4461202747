"""onnx_cp.runtime: the one onnxruntime session factory, and onnx_cp.provenance: the one owner of
the ``onnx_cp`` metadata entry."""
from __future__ import annotations

import gc
import json
import os

import numpy as np
import onnx
import pytest
from builders import conv_model, run

from onnx_cp import model_io, provenance
from onnx_cp.errors import OnnxCpError
from onnx_cp.runtime import OPT_LEVELS, open_session, session_options


def _model() -> onnx.ModelProto:
    # x (1x4x8x8) -> Conv(8x4x3x3 weight) -> y
    rng = np.random.default_rng(0)
    return conv_model((1, 4, 8, 8), rng.standard_normal((8, 4, 3, 3)).astype(np.float32))


def test_a_model_past_the_protobuf_limit_is_loaded_from_a_folder_that_lives_with_the_session(monkeypatch):
    model = _model()
    x = {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    expected = run(model, x)[0]
    monkeypatch.setattr(model_io, "_EXTERNAL_FROM", 1000)  # the 1.2 kB model counts as over 2 GiB
    monkeypatch.setattr(model_io, "_EXTERNAL_MIN_BYTES", 16)

    session = open_session(model)
    folder = session._onnx_cp_folder.name
    assert sorted(os.listdir(folder)) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_allclose(session.run(None, x)[0], expected, rtol=1e-6, atol=1e-6)
    del session
    gc.collect()
    assert not os.path.exists(folder)


def test_a_refused_model_names_the_label_and_the_fix():
    model = _model()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxCpError, match=r"^vgg: onnxruntime cannot load it \(.*check it with onnx.checker"):
        open_session(model, label="vgg")


@pytest.mark.parametrize("level", list(OPT_LEVELS))
def test_every_opt_level_names_an_onnxruntime_level(level):
    import onnxruntime as ort

    options = session_options(threads=2, opt_level=level, quiet=True)
    assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"opt_level": "fast"}, "opt_level='fast' is unknown; use one of disable, basic, extended, all"),
    ({"threads": 0}, "threads=0; it must be an integer of at least 1"),
])
def test_bad_session_options_are_refused(kwargs, message):
    with pytest.raises(OnnxCpError, match=message):
        session_options(**kwargs)


def _layers(model: onnx.ModelProto) -> list[dict]:
    return json.loads(next(p.value for p in model.metadata_props if p.key == provenance.METADATA_KEY))["layers"]


def test_a_second_rewrite_keeps_the_layers_of_the_first():
    model = _model()
    provenance.record(model, {"version": 1, "method": "nls", "layers": [{"node": "a", "nodes": ["a/cp/reduce"]}]})
    provenance.record(model, {"version": 1, "method": "als", "layers": [{"node": "b", "nodes": ["b/cp/reduce"]}]})
    assert [layer["node"] for layer in _layers(model)] == ["a", "b"]
    assert [p.key for p in model.metadata_props] == [provenance.METADATA_KEY]


def test_a_rewrite_without_layers_records_nothing():
    model = _model()
    provenance.record(model, {"version": 1, "method": "nls", "layers": []})
    assert not model.metadata_props


def test_carry_remaps_renamed_nodes_and_copies_other_entries():
    source, target = _model(), _model()  # target's only node is "conv"
    source.metadata_props.add(key="author", value="someone")
    provenance.record(source, {"version": 1, "method": "nls", "layers": [{"node": "c", "nodes": ["conv", "old"]}]})
    notes = provenance.carry(source, target, {"old": ["new1", "new2"]})
    assert _layers(target)[0]["nodes"] == ["conv", "new1", "new2"]
    assert {p.key: p.value for p in target.metadata_props}["author"] == "someone"
    assert notes == ["layer 'c': nodes ['old'] were exported under other names; the metadata now lists "
                     "['conv', 'new1', 'new2']"]


def test_read_groups_unlisted_cp_nodes_by_their_prefix():
    model = _model()
    model.graph.node[0].name = "conv/cp/reduce"
    layers, notes = provenance.read_cp_layers(model)
    assert layers["conv"].nodes == ("conv/cp/reduce",) and notes == []

"""ONNX -> torch (normalize + onnx2torch) and back (torch.onnx.export), keeping the graph's names.

    module = to_torch("fast.onnx")          # a torch.fx.GraphModule, in eval mode
    ...                                     # train it
    tuned = to_onnx(module, like="fast.onnx", example=x[:8])

onnx2torch names each submodule after the ONNX node it came from (``names.module_names``: a
plain name instead where torch cannot use the node's), and the TorchScript exporter names each
exported node ``/<submodule>/<op>``. ``to_onnx`` uses that to give every node that maps
one-to-one back its original name, output names and weight names, and gives the interface its
names whatever they are, so the exported graph reads like the input and the rewriter's
``onnx_cp`` metadata (which lists node names) stays true.
"""
from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx

from onnx_cp.errors import OnnxCpError, spelled
from onnx_cp.finetune._deps import onnx2torch_version, require_torch
from onnx_cp.finetune.converters import IMPORT_FREE_HINT, require_converters
from onnx_cp.finetune.names import module_names, placeholders, restore_interface, restore_names, use_module_names
from onnx_cp.finetune.normalize import normalize
from onnx_cp.graph import runtime_inputs
from onnx_cp.model_io import load_model
from onnx_cp.provenance import carry
from onnx_cp.runtime import open_session

# The TorchScript exporter's opset range (torch.onnx._constants in torch 2.x). Models below 13 are
# exported at 13: below it onnx2torch's Squeeze exports as an If whose branch reads a tensor computed
# after it, which the ONNX checker refuses (PP-OCRv4's recognizer, opset 12).
_MIN_OPSET, _MAX_OPSET = 13, 20
_NUMPY_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                 onnx.TensorProto.FLOAT16: np.float16}
ModelLike = Union[onnx.ModelProto, str, os.PathLike]


@dataclass
class ExportNotes:
    """What ``to_onnx`` could not carry over exactly; empty lists mean nothing was lost."""

    renamed: int = 0  # nodes given back their original names
    unmatched: list[str] = field(default_factory=list)  # original nodes without a 1:1 exported node
    metadata: list[str] = field(default_factory=list)  # changes to the onnx_cp metadata entry
    # original node name -> the exported nodes that compute it (after renaming)
    nodes_of: dict[str, list[str]] = field(default_factory=dict)


def to_torch(model: ModelLike, *, what: str = "the model", example=None):
    """A torch module (``torch.fx.GraphModule``, eval mode) computing what ``model`` computes.

    The graph is normalized first (``onnx_cp.finetune.normalize``) so onnx2torch can read every
    Conv's weights, and onnx-cp's converters (LSTM) are added to onnx2torch's. An operator without
    a converter is refused before any conversion, with every such operator named (``what`` names
    the model in that message); a converter that fails on a node raises OnnxCpError too.
    ``example`` (an input batch, optional) lets onnxruntime tell the ranks of tensors that shape
    inference cannot (``runtime_ranks``), which some converters need.
    """
    torch, onnx2torch = require_torch()
    graph = normalize(load_model(model))
    require_converters(graph, what)
    if example is not None:
        graph = runtime_ranks(graph, example)
    opset = _default_opset(graph)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            module = onnx2torch.convert(use_module_names(graph))
    except NotImplementedError as exc:
        raise OnnxCpError(f"onnx2torch {onnx2torch_version()} cannot convert {what} ({exc}); re-export it at "
                          f"another opset (it is at {opset}) or without that operator, or {IMPORT_FREE_HINT}"
                          ) from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise OnnxCpError(f"onnx2torch {onnx2torch_version()} failed on {what} ({type(exc).__name__}: "
                          f"{exc}); check it with {spelled('onnx_cp.inspect_model', repr('onnx-cp inspect'))} "
                          "and onnx.checker") from None
    assert isinstance(module, torch.nn.Module)
    return module.eval()


def runtime_ranks(model: onnx.ModelProto, x) -> onnx.ModelProto:
    """``model`` with a value_info (the rank alone, every dimension unnamed) for each node output
    whose rank shape inference cannot tell, read from an onnxruntime run on batch ``x``.

    onnx2torch picks BatchNorm1d/2d/3d by its input's rank; a Reshape to a shape computed at run
    time (PP-OCR's recognizers) leaves the rank unknown and the conversion fails without this.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: without it nothing is known, the probe says all
        inferred = model
    g = inferred.graph
    known = {v.name for v in [*g.value_info, *g.input, *g.output] if v.type.tensor_type.HasField("shape")}
    missing = [o for node in model.graph.node for o in node.output if o and o not in known]
    if not missing:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in missing)
    session = open_session(probe)
    values = session.run(missing, {session.get_inputs()[0].name: np.asarray(x)})
    ranked = onnx.ModelProto()
    ranked.CopyFrom(model)
    ranked.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), [None] * v.ndim)
        for name, v in zip(missing, values))
    return ranked


def to_onnx(module, like: ModelLike, *, example=None, opset: int | None = None,
            notes: ExportNotes | None = None) -> onnx.ModelProto:
    """Export ``module`` (from ``to_torch(like)``, perhaps trained) with ``like``'s interface.

    Input and output names, dynamic dimensions and ``metadata_props`` come from ``like``; nodes
    that map one-to-one to ``like``'s nodes get their names back. ``example`` is an input batch
    (a tensor or array); without it one is made from ``like``'s input shape, which must then be
    static apart from the batch. ``opset`` defaults to ``like``'s, within 13..20 (see _MIN_OPSET).
    ``notes``, when given, is filled with what could not be carried over exactly.
    """
    torch, _ = require_torch()
    like = load_model(like)
    reference = normalize(like)
    inputs = runtime_inputs(reference.graph)
    if len(inputs) != 1:
        raise OnnxCpError(f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); fine-tuning "
                          "supports models with one image input")
    if opset is None:
        opset = min(max(_default_opset(like), _MIN_OPSET), _MAX_OPSET)
    device = _device_of(module)
    x = example_input(like) if example is None else fit_batch(like, example)
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device)
    values = [inputs[0], *reference.graph.output]
    interface = [v.name for v in values]
    dim_names = [d.dim_param for v in values for d in v.type.tensor_type.shape.dim]
    stand_ins = placeholders(interface, dim_names)  # the exporter refuses names such as '387'
    dynamic = {stand_in: _dynamic_dims(v) for stand_in, v in zip(stand_ins, values)}
    dynamic = {name: dims for name, dims in dynamic.items() if dims}
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is chosen on purpose (it keeps one ONNX node per module);
            # its deprecation and tracer warnings say nothing about this model.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset,
                              input_names=stand_ins[:1], output_names=stand_ins[1:],
                              dynamic_axes=dynamic or None, do_constant_folding=True)
    finally:
        module.train(was_training)
    exported = onnx.load_from_string(buffer.getvalue())
    restore_interface(exported.graph, dict(zip(stand_ins, interface)))
    notes = notes if notes is not None else ExportNotes()
    renamed, unmatched, nodes_of = restore_names(exported, reference, module_names(reference.graph))
    notes.renamed += renamed
    notes.unmatched.extend(unmatched)
    notes.nodes_of.update(nodes_of)
    notes.metadata.extend(carry(like, exported, notes.nodes_of))
    return exported


def example_input(model: onnx.ModelProto, batch: int = 2) -> np.ndarray:
    """Zeros of the model's input shape (the batch dimension set to ``batch`` when dynamic)."""
    inp = runtime_inputs(model.graph)[0]
    tensor = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if dims and dims[0] == 0:
        dims[0] = batch
    if not dims or any(d <= 0 for d in dims):
        raise OnnxCpError(f"input {inp.name!r} has a dynamic shape {_dims(tensor)} beyond the batch; "
                          "pass an example batch to to_onnx")
    return np.zeros(dims, _NUMPY_DTYPES.get(tensor.elem_type, np.float32))


def fit_batch(model: onnx.ModelProto, x):
    """``x`` cut or repeated to the model's batch size when that is fixed; as it is otherwise."""
    dim = runtime_inputs(model.graph)[0].type.tensor_type.shape.dim
    fixed = dim[0].dim_value if len(dim) and dim[0].HasField("dim_value") else 0
    if fixed <= 0 or len(x) == fixed:
        return x
    return x[np.arange(fixed) % len(x)]  # repeats samples when x is shorter


def op_counts(model: onnx.ModelProto) -> Counter:
    """How many nodes of each operator the top-level graph has."""
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in model.graph.node)


def structure_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Operator count differences after - before (only the operators whose count changed).

    Both graphs are normalized first: Constant nodes and Identity nodes on weights cost nothing
    at run time, and the exporter adds Identity nodes where weights happen to be equal.
    """
    a, b = op_counts(normalize(before)), op_counts(normalize(after))
    return {op: b[op] - a[op] for op in sorted(set(a) | set(b)) if a[op] != b[op]}


def max_difference(model: onnx.ModelProto, module, x) -> tuple[float, float]:
    """(largest |onnxruntime - torch| over all outputs, largest |torch|) on batch ``x``."""
    torch, _ = require_torch()

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            refs = output_list(module(torch.as_tensor(x).to(_device_of(module))), len(model.graph.output))
    finally:
        module.train(was_training)
    refs = [r.detach().cpu().numpy() for r in refs]
    session = open_session(model)
    name = session.get_inputs()[0].name
    gots = session.run(None, {name: np.asarray(torch.as_tensor(x).cpu().numpy())})
    scale = max(float(np.max(np.abs(r), initial=0.0)) for r in refs)
    if [g.shape for g in gots] != [r.shape for r in refs]:
        return float("inf"), scale
    return max(float(np.max(np.abs(g - r), initial=0.0)) for g, r in zip(gots, refs)), scale


def output_list(out, count: int | None = None) -> list:
    """A module's outputs as a list of ``count`` tensors (any number when None), in the ONNX graph's
    output order.

    onnx2torch returns a tensor for one output and a tuple for several; an output read from a node
    with several outputs comes back as that node's whole tuple, which is flattened here.
    """
    flat, stack = [], [out]
    while stack:
        item = stack.pop(0)
        if isinstance(item, (tuple, list)):
            stack[:0] = list(item)
        else:
            flat.append(item)
    if count is not None and len(flat) != count:
        raise OnnxCpError(f"the converted module returns {len(flat)} tensors for the model's {count} outputs; "
                          "onnx2torch returns a whole node for an output read from a node with several "
                          "outputs: re-export the model with that output computed by a node of its own")
    return flat


def first_output(out):
    """A module's first output (onnx2torch returns a tuple for models with several outputs)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _dynamic_dims(value: onnx.ValueInfoProto) -> dict[int, str]:
    """{axis: name} of the dimensions without a fixed size."""
    dims = value.type.tensor_type.shape.dim
    return {k: d.dim_param or f"{value.name}_dim{k}" for k, d in enumerate(dims) if not d.HasField("dim_value")}


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), _MAX_OPSET)


def _device_of(module):
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return "cpu"


def _dims(tensor) -> str:
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in tensor.shape.dim)



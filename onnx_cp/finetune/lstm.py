"""An onnx2torch converter for ONNX LSTM (which onnx2torch lacks): a ``torch.nn.LSTM`` inside.

Handled: directions forward, reverse and bidirectional; the default activations (Sigmoid, Tanh,
Tanh); with or without B, initial_h, initial_c; layout 0 (X is seq x batch x input). Refused,
with the reason: sequence_lens, peepholes (P), clip, input_forget, other activations, layout 1.

Weights: ONNX stacks the gates as i, o, f, c; torch as i, f, g(=c), o. ONNX's B is [Wb, Rb],
torch's biases are bias_ih and bias_hh. Outputs keep ONNX's layout: Y is seq x directions x
batch x hidden, Y_h and Y_c directions x batch x hidden (torch's own layout for those two).

Exported again (``torch.onnx.export``), the module is one ONNX LSTM node with W, R, B built from
the trained parameters (constant-folded into initializers), so the graph keeps its structure.
This module imports torch and onnx2torch: import it only where they are needed.
"""
from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_onnx_version
from onnx2torch.utils.custom_export_to_onnx import CustomExportToOnnx, OnnxToTorchModuleWithCustomExport
from torch import nn

# LSTM's versions in the ONNX standard from which its semantics are these (1 had output_sequence).
VERSIONS = (7, 14, 22)
ONNX_TO_TORCH_GATES = (0, 2, 3, 1)  # torch's i, f, g, o taken from ONNX's i, o, f, c
TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
_SUFFIX = ("", "_reverse")


class OnnxLSTM(nn.Module, OnnxToTorchModuleWithCustomExport):
    """ONNX LSTM as a torch module: ``forward(x, initial_h=None, initial_c=None) -> (Y, Y_h, Y_c)``."""

    def __init__(self, lstm: nn.LSTM, direction: str):
        super().__init__()
        self.lstm = lstm
        self.direction = direction

    @property
    def directions(self) -> int:
        return 2 if self.lstm.bidirectional else 1

    def _onnx_attrs(self, opset_version: int) -> dict:
        del opset_version
        return {"hidden_size_i": self.lstm.hidden_size, "direction_s": self.direction}

    def forward(self, x: torch.Tensor, initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None):
        def compute():
            hidden, dirs = self.lstm.hidden_size, self.directions
            state = None
            if initial_h is not None or initial_c is not None:
                zeros = x.new_zeros(dirs, x.shape[1], hidden)
                state = (zeros if initial_h is None else initial_h, zeros if initial_c is None else initial_c)
            seq = x.flip(0) if self.direction == "reverse" else x
            y, (h, c) = self.lstm(seq, state)
            if self.direction == "reverse":
                y = y.flip(0)
            y = y.reshape(y.shape[0], y.shape[1], dirs, hidden).transpose(1, 2)
            return y, h, c

        if not torch.onnx.is_in_onnx_export():
            return compute()

        def placeholders():
            # The tracer fails on an LSTM run inside the export's autograd Function (unordered_map::at),
            # and only the outputs' shapes and types matter there.
            seq, batch, hidden, dirs = x.shape[0], x.shape[1], self.lstm.hidden_size, self.directions
            return x.new_zeros(seq, dirs, batch, hidden), x.new_zeros(dirs, batch, hidden), \
                x.new_zeros(dirs, batch, hidden)

        w, r, b = self.onnx_weights()
        slots = [x, w, r, b, None, initial_h, initial_c]  # ONNX LSTM's inputs, None where omitted
        present = "".join("1" if v is not None else "0" for v in slots)
        return _ExportLSTM.export(placeholders, *[v for v in slots if v is not None], present,
                                  self._onnx_attrs(get_onnx_version()))

    def onnx_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(W, R, B) in ONNX's layout and gate order, from the module's parameters."""
        lstm = self.lstm
        w = torch.stack([_gates(getattr(lstm, f"weight_ih_l0{s}"), TORCH_TO_ONNX_GATES)
                         for s in _SUFFIX[:self.directions]])
        r = torch.stack([_gates(getattr(lstm, f"weight_hh_l0{s}"), TORCH_TO_ONNX_GATES)
                         for s in _SUFFIX[:self.directions]])
        if not lstm.bias:
            return w, r, None
        b = torch.stack([torch.cat([_gates(getattr(lstm, f"bias_ih_l0{s}"), TORCH_TO_ONNX_GATES),
                                    _gates(getattr(lstm, f"bias_hh_l0{s}"), TORCH_TO_ONNX_GATES)])
                         for s in _SUFFIX[:self.directions]])
        return w, r, b


class _ExportLSTM(CustomExportToOnnx):  # pylint: disable=abstract-method
    """Exports OnnxLSTM as one ONNX LSTM node with three outputs."""

    @staticmethod
    def symbolic(graph, *args):
        *given, present, attrs = args  # the inputs given, then which of LSTM's inputs they are
        given = iter(given)
        inputs = [next(given) if flag == "1" else None for flag in present]
        while inputs[-1] is None:
            inputs.pop()
        return graph.op("LSTM", *[_absent(graph) if v is None else v for v in inputs], **attrs, outputs=3)


def _absent(graph):
    """An omitted optional input (written as an empty name in the ONNX node)."""
    node = graph.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())  # pylint: disable=protected-access
    return node


def _gates(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """The four gate blocks of ``tensor`` (stacked along dim 0) in ``order``."""
    blocks = tensor.chunk(4, dim=0)
    return torch.cat([blocks[k] for k in order], dim=0)


def convert_lstm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """onnx2torch's converter signature: the ONNX node -> (OnnxLSTM, which values it reads)."""
    attrs = node.attributes
    inputs = list(node.input_values) + [""] * (8 - len(node.input_values))
    x_name, w_name, r_name, b_name, lens_name, h_name, c_name, p_name = inputs[:8]
    _refuse_unsupported(node, attrs, graph, inputs)
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"LSTM {node.name!r}: direction {direction!r} is not an ONNX direction")
    w = graph.initializers[w_name].to_torch()
    r = graph.initializers[r_name].to_torch()
    dirs, hidden = w.shape[0], r.shape[-1]
    if dirs != (2 if direction == "bidirectional" else 1) or attrs.get("hidden_size", hidden) != hidden:
        raise NotImplementedError(f"LSTM {node.name!r}: W {tuple(w.shape)} and R {tuple(r.shape)} do not fit "
                                  f"direction {direction!r} and hidden_size {attrs.get('hidden_size')}")
    b = graph.initializers[b_name].to_torch() if b_name else None
    lstm = nn.LSTM(w.shape[-1], hidden, bias=b is not None, bidirectional=dirs == 2)
    with torch.no_grad():
        for d in range(dirs):
            s = _SUFFIX[d]
            getattr(lstm, f"weight_ih_l0{s}").copy_(_gates(w[d], ONNX_TO_TORCH_GATES))
            getattr(lstm, f"weight_hh_l0{s}").copy_(_gates(r[d], ONNX_TO_TORCH_GATES))
            if b is not None:
                wb, rb = b[d].chunk(2)
                getattr(lstm, f"bias_ih_l0{s}").copy_(_gates(wb, ONNX_TO_TORCH_GATES))
                getattr(lstm, f"bias_hh_l0{s}").copy_(_gates(rb, ONNX_TO_TORCH_GATES))
    del lens_name, p_name  # refused above when present
    mapping = OnnxMapping(inputs=(x_name, h_name, c_name), outputs=node.output_values)
    return OperationConverterResult(torch_module=OnnxLSTM(lstm, direction), onnx_mapping=mapping)


def _refuse_unsupported(node: OnnxNode, attrs, graph: OnnxGraph, inputs: list[str]) -> None:
    """NotImplementedError naming the first feature of this LSTM node that the converter lacks."""
    name = node.name or node.unique_name
    _, w_name, r_name, b_name, lens_name, _, _, p_name = inputs[:8]
    activations = tuple(a.lower() for a in attrs.get("activations", ()))
    problems = [
        (bool(lens_name), "sequence_lens is given"),
        (bool(p_name), "it has peephole weights (P)"),
        ("clip" in attrs, "it clips the cell input"),
        (attrs.get("input_forget", 0) != 0, "input_forget is set"),
        (attrs.get("layout", 0) != 0, "layout is 1 (batch first)"),
        (bool(activations) and any(a != _DEFAULT_ACTIVATIONS[k % 3] for k, a in enumerate(activations)),
         f"its activations {list(activations)} are not the default Sigmoid, Tanh, Tanh"),
        (any(v and v not in graph.initializers for v in (w_name, r_name, b_name)),
         "W, R or B is computed at run time instead of being an initializer"),
    ]
    for bad, why in problems:
        if bad:
            raise NotImplementedError(f"LSTM {name!r} cannot be converted: {why}")


def register() -> None:
    """Add the converter to onnx2torch's registry for every LSTM version it has none for."""
    from onnx2torch.node_converters.registry import get_converter

    for version in VERSIONS:
        try:
            get_converter("LSTM", version)
        except NotImplementedError:
            add_converter(operation_type="LSTM", version=version)(convert_lstm)

"""Names across the torch boundary: any legal ONNX name goes into torch and comes back unchanged.

ONNX allows any string as a node or tensor name ('387', '/conv1/Conv', 'onnx::Conv_1', 'a b',
unicode); torch does not. onnx2torch turns each node's name into a submodule name (dots become
slashes), which torch refuses when it is empty or an attribute of the module ('train',
'graph'), and it keys graph inputs and submodules in one table, so a node named like a tensor
breaks the conversion. torch's exporter refuses input and output names made of digits.

So the torch side sees ``module_names``: a node keeps its name where torch can use it, others
get a plain unique one. The exporter sees ``placeholders`` for the interface, and
``restore_interface`` and ``restore_names`` put the ONNX names back afterwards.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import onnx

# What onnx2torch can use as a submodule name: plain words joined by slashes.
_PLAIN_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z0-9_]+)*")
_PLACEHOLDER = "onnx_cp_io_{}"
_PLACEHOLDER_IN = re.compile(r"onnx_cp_io_\d+(?!\d)")


def module_names(graph: onnx.GraphProto) -> list[str]:
    """Per node of ``graph``, the submodule name onnx2torch will give it once ``use_module_names``
    ran: its own name where torch can use it, else a fresh plain name after its op type."""
    taken = set(_tensor_names(graph)) | _reserved()
    names = []
    for k, node in enumerate(graph.node):
        own = node.name.replace(".", "/").lstrip("/")
        usable = (_PLAIN_MODULE.fullmatch(own) is not None and own not in taken
                  and not own.endswith("_split_output") and not own.startswith("onnx_initializer_"))
        name = own if usable else _fresh(own, node, k, taken)
        taken.add(name)
        names.append(name)
    return names


def use_module_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place and returned) with each node named by ``module_names``."""
    for node, name in zip(model.graph.node, module_names(model.graph)):
        node.name = name
    return model


def placeholders(names: list[str], dims: Iterable[str] = ()) -> list[str]:
    """Plain names the exporter accepts for the interface names ``names``: none of them appears in those
    names or in the dimension names ``dims``, so restoring the names cannot touch anything else."""
    given, found, k = [*names, *dims], [], 0
    while len(found) < len(names):
        candidate = _PLACEHOLDER.format(k)
        k += 1
        if not any(candidate in text for text in given):
            found.append(candidate)
    return found


def restore_interface(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename the exported interface tensors (placeholder -> ONNX name); a tensor of the exporter's
    that already holds one of the ONNX names is moved aside to a fresh name first."""
    wanted = set(renames.values())
    present = _tensor_names(graph)
    clashes = sorted(wanted & present - set(renames))
    taken = present | wanted
    aside = {}
    for name in clashes:
        aside[name] = _fresh_tensor(name, taken)
        taken.add(aside[name])
    rename_tensors(graph, {**aside, **renames})
    # The exporter names dynamic dimensions after the tensor ('Reshape<name>_dim_0'): those too.
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = _PLACEHOLDER_IN.sub(lambda m: renames.get(m.group(0), m.group(0)), dim.dim_param)


def rename_tensors(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename tensors everywhere in the top graph (node inputs and outputs, initializers, value infos,
    inputs, outputs), all at once."""
    if not renames:
        return
    for node in graph.node:
        for field_name in ("input", "output"):
            container = getattr(node, field_name)
            values = [renames.get(v, v) for v in container]
            del container[:]
            container.extend(values)
    for item in [*graph.initializer, *graph.value_info, *graph.input, *graph.output]:
        item.name = renames.get(item.name, item.name)


def restore_names(exported: onnx.ModelProto, reference: onnx.ModelProto, modules: list[str]) -> tuple[
        int, list[str], dict[str, list[str]]]:
    """Rename nodes, their outputs and their weights back to ``reference``'s where they map 1:1.

    ``modules``: the submodule name of each of ``reference``'s nodes (``module_names``). Returns
    (nodes renamed, reference nodes without a 1:1 exported node, original node name -> the
    exported nodes that compute it).
    """
    by_module = dict(zip(modules, reference.graph.node))
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in exported.graph.node:
        module = _owning_module(node.name, by_module)
        if module is not None:
            groups.setdefault(module, []).append(node)
    ref_inits = {t.name for t in reference.graph.initializer}
    exp_inits = {t.name for t in exported.graph.initializer}
    graph = exported.graph
    index = {id(n): k for k, n in enumerate(graph.node)}
    node_names: dict[int, str] = {}
    tensors: dict[str, str] = {}
    unmatched = []
    for module, original in by_module.items():
        got = groups.get(module, [])
        if len(got) != 1 or got[0].op_type != original.op_type or len(got[0].output) != len(original.output):
            unmatched.append(original.name or module)
            continue
        node = got[0]
        node_names[index[id(node)]] = original.name  # an unnamed node comes back unnamed
        for new, old in zip(original.output, node.output):
            if new and old:
                tensors[old] = new
        for new, old in zip(original.input, node.input):
            if old in exp_inits and new in ref_inits:
                tensors.setdefault(old, new)
    tensors = _collision_free(tensors, {n: n for n in _tensor_names(graph)})
    node_names = _collision_free(node_names, {k: n.name for k, n in enumerate(graph.node)}, repeatable={""})
    for k, name in node_names.items():
        graph.node[k].name = name
    rename_tensors(graph, tensors)
    nodes_of = {original.name: [n.name for n in groups.get(module, [])]
                for module, original in by_module.items() if original.name}
    return len(node_names), unmatched, nodes_of


def _owning_module(node_name: str, modules: dict) -> str | None:
    """The onnx2torch submodule whose scope ``/<module>/...`` produced this exported node."""
    parts = node_name.lstrip("/").split("/")
    for end in range(len(parts) - 1, 0, -1):  # longest prefix first
        candidate = "/".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _collision_free(renames: dict, current: dict, repeatable: frozenset | set = frozenset()) -> dict:
    """Drop renames until the final names are unique, those in ``repeatable`` aside (``current``: key ->
    name in use now)."""
    accepted = dict(renames)
    while True:
        final = Counter(accepted.get(key, name) for key, name in current.items())
        bad = [key for key, new in accepted.items() if final[new] > 1 and new not in repeatable]
        if not bad:
            return accepted
        for key in bad:
            del accepted[key]


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output,
                                                                      *graph.value_info]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _fresh(own: str, node: onnx.NodeProto, k: int, taken: set[str]) -> str:
    """A plain submodule name not in ``taken``: the node's name made plain (or its op type, where that
    leaves nothing usable), with the node's position added when needed to keep it unique."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", own).strip("_")
    if not base or not (base[0].isalpha() or base[0] == "_"):
        base = re.sub(r"[^A-Za-z0-9_]+", "_", node.op_type) or "node"
    name, suffix = base, k
    while name in taken or _PLAIN_MODULE.fullmatch(name) is None:
        name = f"{base}_{suffix}"
        suffix += 1
    return name


def _fresh_tensor(name: str, taken: Iterable[str]) -> str:
    k = 0
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def _reserved() -> set[str]:
    """Attribute names of the modules onnx2torch builds, which a submodule cannot take."""
    import torch
    from torch import fx

    module = fx.GraphModule(torch.nn.Module(), fx.Graph())
    return set(dir(module)) | set(vars(module)) | {"initializers"}

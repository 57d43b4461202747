"""The ``onnx_cp`` entry of a model's ``metadata_props``: which nodes a rewrite put in place of
which Conv. This module alone writes, merges, reads and remaps it.

The entry is JSON::

    {"version": 1, "method": "nls",
     "layers": [{"node", "nodes", "rank", "decomposition", "realization", "macs_before", "macs_after",
                 "rel_error"}, ...]}

``node`` is the original Conv's name, ``nodes`` the names of the nodes that replaced it. A model
rewritten twice lists the layers of both rewrites, the earlier first. Readers need only
``node`` and ``nodes``; nodes named ``<original>/<decomposition>/<stage>`` (``/cp/``, ``/tucker2/``,
``/svd/``, ``/gkpd/``, ``/lrcp/``) that no entry lists are grouped by that prefix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import onnx

METADATA_KEY = "onnx_cp"
VERSION = 1
CP_MARK = "/cp/"
# The tag every decomposition's nodes carry after the original node's name (decompositions/nodes.py).
MARKS = (CP_MARK, "/tucker2/", "/svd/", "/gkpd/", "/lrcp/")


@dataclass(frozen=True)
class CpLayer:
    """One original Conv that a rewrite replaced, and what the rewrite put in its place."""

    node: str
    nodes: tuple[str, ...]
    rank: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def mac_ratio(self) -> float | None:
        """macs_before / macs_after: the multiply-add reduction the rewrite promises."""
        if self.macs_before and self.macs_after:
            return self.macs_before / self.macs_after
        return None

    def to_dict(self) -> dict:
        return {"node": self.node, "nodes": list(self.nodes), "rank": self.rank,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "mac_ratio": self.mac_ratio}


def entry(method: str, rewritten) -> dict:
    """The metadata entry of one rewrite, from its report's rewritten rows (``LayerReport``):
    what bench and later rewrites read back."""
    return {"version": 1, "method": method, "layers": [
        {"node": l.node, "nodes": l.new_nodes, "rank": l.rank, "decomposition": l.decomposition,
         "realization": l.realization, "macs_before": l.macs_before,
         "macs_after": l.macs_after, "rel_error": l.rel_error} for l in rewritten]}


def record(model: onnx.ModelProto, entry: dict) -> None:
    """Write a rewrite's ``entry`` (``{"version", "method", "layers"}``) into ``model``'s metadata,
    after the layers an earlier rewrite recorded there. An entry without layers writes nothing."""
    if not entry.get("layers"):
        return
    entry = {**entry, "version": VERSION}
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:  # an earlier rewrite: keep its layers too
            try:
                entry["layers"] = json.loads(prop.value).get("layers", []) + list(entry["layers"])
            except (ValueError, AttributeError, TypeError):
                pass
            prop.value = json.dumps(entry)
            return
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(entry))


def read_cp_layers(model: onnx.ModelProto) -> tuple[dict[str, CpLayer], list[str]]:
    """The rewritten layers of ``model`` by original node name, and notes on anything odd."""
    notes: list[str] = []
    layers: dict[str, CpLayer] = {}
    raw = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if raw is not None:
        try:
            layers = _parse(raw)
        except (ValueError, TypeError, KeyError) as exc:
            notes.append(f"metadata {METADATA_KEY!r} is unreadable ({exc}); grouped nodes by their "
                         f"'{CP_MARK}' names and left multiply-add ratios out")
            layers = {}
    listed = {name for layer in layers.values() for name in layer.nodes}
    by_prefix: dict[str, list[str]] = {}
    for node in model.graph.node:
        prefix = _prefix(node.name)
        if prefix is not None and node.name not in listed:
            by_prefix.setdefault(prefix, []).append(node.name)
    for prefix, names in by_prefix.items():
        if prefix in layers:
            old = layers[prefix]
            layers[prefix] = CpLayer(old.node, old.nodes + tuple(names), old.rank, old.macs_before, old.macs_after)
        else:
            layers[prefix] = CpLayer(prefix, tuple(names))
    return layers, notes


def _prefix(name: str) -> str | None:
    """The original node's name in a decomposition's node name (before its earliest mark)."""
    cuts = [name.index(mark) for mark in MARKS if mark in name]
    return name[:min(cuts)] if cuts else None


def carry(source: onnx.ModelProto, target: onnx.ModelProto, renamed: Mapping[str, list[str]]) -> list[str]:
    """Copy ``source``'s metadata_props to ``target``, keeping the layer map true to ``target``'s
    node names: a listed node that ``target`` lacks is replaced by ``renamed[node]`` (the nodes
    that compute it there). Returns a note per change."""
    present = {n.name for n in target.graph.node}
    notes: list[str] = []
    for prop in source.metadata_props:
        value = prop.value
        if prop.key == METADATA_KEY:
            value = _remap(value, present, renamed, notes)
        target.metadata_props.add(key=prop.key, value=value)
    return notes


def _remap(raw: str, present: set[str], renamed: Mapping[str, list[str]], notes: list[str]) -> str:
    try:
        data = json.loads(raw)
        layers = data["layers"]
    except (ValueError, KeyError, TypeError):
        notes.append(f"metadata {METADATA_KEY!r} is unreadable; copied as it was")
        return raw
    for layer in layers if isinstance(layers, list) else []:
        nodes = layer.get("nodes") if isinstance(layer, dict) else None
        if not isinstance(nodes, list):
            continue
        missing = [n for n in nodes if n not in present]
        if not missing:
            continue
        remapped = [m for n in nodes for m in ([n] if n in present else renamed.get(n, []))]
        notes.append(f"layer {layer.get('node')!r}: nodes {missing} were exported under other "
                     f"names; the metadata now lists {remapped}")
        layer["nodes"] = remapped
    return json.dumps(data)


def _parse(raw: str) -> dict[str, CpLayer]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ValueError("expected an object with a 'layers' list")
    layers = {}
    for entry in data["layers"]:
        node = entry["node"]
        nodes = entry.get("nodes") or []
        if not isinstance(node, str) or not isinstance(nodes, list):
            raise ValueError(f"layer {entry!r} needs a string 'node' and a list 'nodes'")
        layers[node] = CpLayer(node, tuple(str(n) for n in nodes), _int(entry.get("rank")),
                               _int(entry.get("macs_before")), _int(entry.get("macs_after")))
    return layers


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

"""Which nodes of a rewritten model came from which original Conv.

The rewriter records ``metadata_props["onnx_cp"]`` = JSON
``{"version": 1, "layers": [{"node", "nodes", "rank", "macs_before", "macs_after"}, ...]}``.
Nodes named ``<original>/cp/<stage>`` that the metadata does not list are grouped by that prefix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import onnx

METADATA_KEY = "onnx_cp"
CP_MARK = "/cp/"


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
        if CP_MARK in node.name and node.name not in listed:
            by_prefix.setdefault(node.name.split(CP_MARK, 1)[0], []).append(node.name)
    for prefix, names in by_prefix.items():
        if prefix in layers:
            old = layers[prefix]
            layers[prefix] = CpLayer(old.node, old.nodes + tuple(names), old.rank, old.macs_before, old.macs_after)
        else:
            layers[prefix] = CpLayer(prefix, tuple(names))
    return layers, notes


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

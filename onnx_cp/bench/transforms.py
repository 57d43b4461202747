"""What onnxruntime did to a graph: layout transforms and fusions, read off its optimized graph.

The comparison is by op type (with domain), before and after optimization, so it names what
happened without depending on onnxruntime's internal node names:

* ops in the ``com.microsoft.nchwc`` domain and ReorderInput/ReorderOutput: the NCHWc layout;
* FusedConv, FusedGemm, ...: fusions into a new op;
* ops of the original that are gone (Relu, BatchNormalization, ...): absorbed by a fusion or
  folded into constants.
"""
from __future__ import annotations

from collections import Counter

import onnx

_NCHWC = "com.microsoft.nchwc"
_REORDERS = ("ReorderInput", "ReorderOutput")


def _ops(graph: onnx.GraphProto) -> Counter:
    return Counter((node.domain or "", node.op_type) for node in graph.node)


def _base_ops(counts: Counter) -> Counter:
    out: Counter = Counter()
    for (_, op), n in counts.items():
        out["", op.removeprefix("Fused")] += n
    return out


def _listing(counts: Counter) -> str:
    return ", ".join(f"{op} x{n}" for (_, op), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1])))


def describe_transforms(original: onnx.GraphProto, optimized: onnx.GraphProto, label: str) -> tuple[str, ...]:
    """One line per kind of transform onnxruntime applied to ``original`` (empty if none)."""
    before, after = _ops(original), _ops(optimized)
    nchwc = Counter({key: n for key, n in after.items() if key[0] == _NCHWC and key[1] not in _REORDERS})
    reorders = Counter({key: n for key, n in after.items() if key[1] in _REORDERS})
    new_ops = Counter({key: n for key, n in (after - before).items()
                       if key[0] != _NCHWC and key[1] not in _REORDERS})
    # By base op type: a Conv that became an NCHWc Conv or a FusedConv was converted, not absorbed.
    gone = _base_ops(before) - _base_ops(after)
    lines = []
    if nchwc or reorders:
        lines.append(f"{label}: onnxruntime's NCHWc layout ran {_listing(nchwc) or 'no ops'}"
                     + (f", with {_listing(reorders)} converting to and from it" if reorders else ""))
    if new_ops:
        lines.append(f"{label}: onnxruntime fused nodes into {_listing(new_ops)}")
    if gone:
        lines.append(f"{label}: ops absorbed or folded by onnxruntime (count before minus after): {_listing(gone)}")
    return tuple(lines)

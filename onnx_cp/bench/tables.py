"""The report as plain tables of strings, which every renderer (terminal, Markdown, HTML) draws."""
from __future__ import annotations

from onnx_cp.bench.compare import Comparison, LayerComparison
from onnx_cp.bench.profile import NodeProfile
from onnx_cp.bench.report import BenchReport
from onnx_cp.table import Table

DASH = "-"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}x"


def share(value: float | None) -> str:
    return DASH if value is None else f"{value:.1%}"


def settings_line(report: BenchReport) -> str:
    c = report.config
    inputs = ", ".join(f"{name}={'x'.join(map(str, shape))} {dtype}" for name, (shape, dtype) in report.inputs.items())
    threads = "1 thread" if c.threads == 1 else f"{c.threads} threads"
    return (f"onnxruntime CPU, opt level {c.opt_level}, {threads}, {c.runs} runs after {c.warmup} warm-up, "
            f"models alternating; inputs {inputs or '(none)'}")


def machine_line(report: BenchReport) -> str:
    """Where the times were taken: CPU, ISA, cores, onnxruntime version."""
    return f"machine: {report.machine.label}"


def latency_table(report: BenchReport) -> Table:
    first = report.models[0].latency.median
    table = Table("Whole-model latency (ms)",
                  ["model", "median", "p10", "p90", "mean", "min", "spread", "vs first"],
                  [False, True, True, True, True, True, True, True], optional=(4, 5, 2, 3))
    for m in report.models:
        s = m.latency
        table.rows.append([m.label, ms(s.median), ms(s.p10), ms(s.p90), ms(s.mean), ms(s.min),
                           f"{s.spread:.1%}", ratio(first / s.median if s.median else None)])
        table.emphasis.append(False)
    return table


def comparison_table(c: Comparison) -> Table:
    table = Table(f"Per layer: {c.original} -> {c.rewritten} (median per run, from the profiler)",
                  ["layer", "op", "orig ms", "rewr ms", "speed-up", "MAC ratio", "efficiency",
                   "% orig", "% rewr"],
                  [False, False, True, True, True, True, True, True, True], optional=(8, 7, 1))
    for row in c.layers:
        op = (f"CP r={row.rank}" if row.rank else "CP") if row.rewritten else row.op
        table.rows.append(_comparison_cells(row, op))
        table.emphasis.append(row.rewritten)
    if c.cp_layers is not None:
        table.footer.append(_comparison_cells(c.cp_layers, ""))
    table.footer.append(_comparison_cells(c.whole_model, ""))
    return table


def profile_table(p: NodeProfile) -> Table:
    table = Table(f"Per layer: {p.label} (median per run, from the profiler)",
                  ["layer", "op", "ms", "share", "onnxruntime nodes"], [False, False, True, True, False],
                  optional=(4, 1))
    for layer in p.layers:
        nodes = ", ".join(n.name for n in layer.nodes)
        table.rows.append([layer.layer + ("" if layer.mapped else " (unmapped)"), layer.op, ms(layer.ms),
                           share(layer.share), nodes])
        table.emphasis.append(layer.layer in p.cp_layers)
    table.footer.append(["total", "", ms(p.total_ms), share(1.0), f"{p.runs} runs"])
    return table


def all_tables(report: BenchReport) -> list[Table]:
    tables = [latency_table(report)]
    if report.comparisons:
        tables.extend(comparison_table(c) for c in report.comparisons)
    else:
        tables.extend(profile_table(m.profile) for m in report.models if m.profile is not None)
    return tables


def _comparison_cells(row: LayerComparison, op: str) -> list[str]:
    return [row.layer, op, ms(row.original_ms), ms(row.rewritten_ms), ratio(row.speedup), ratio(row.mac_ratio),
            DASH if row.efficiency is None else f"{row.efficiency:.2f}", share(row.share_original),
            share(row.share_rewritten)]

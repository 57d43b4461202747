"""The package's shape: `import onnx_cp` stays light, and no two modules import each other."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "onnx_cp"
HEAVY = ("onnxruntime", "rich", "torch", "optuna")


def test_import_onnx_cp_loads_no_heavy_dependency():
    code = ("import sys, onnx_cp; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"`import onnx_cp` loads {done.stdout.split()}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (inside functions and
    ``if TYPE_CHECKING:`` too), relative imports resolved. ``from package import sub`` counts
    as importing the submodule, not the package."""
    package = name if is_package else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets += [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.c` of a name inside module a.b
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_sees_imports_inside_functions():
    # a -> b at top level, b -> a inside a function: one circle; c -> a alone is none
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}
    assert len(graph) > 50 and graph["onnx_cp.bench.report"], "the import graph came out empty"
    cycles = _cycles(graph)
    described = ["; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import circles:\n" + "\n".join(described)


# The package's import layers, lowest first (docs/architecture.md draws them): a module imports
# only from its own layer or those below it. A module is placed by its longest listed prefix.
LAYERS = (
    ("base", ("onnx_cp.errors", "onnx_cp.progress", "onnx_cp.table", "onnx_cp.decision")),
    ("onnx", ("onnx_cp.machine", "onnx_cp.graph", "onnx_cp.conv", "onnx_cp.shapes", "onnx_cp.runtime", "onnx_cp.model_io",
              "onnx_cp.model_files", "onnx_cp.output_paths", "onnx_cp.protobuf_stream", "onnx_cp.provenance",
              "onnx_cp.report")),
    ("numerics", ("onnx_cp.solver",)),
    ("decompositions", ("onnx_cp.decompositions",)),
    ("sites", ("onnx_cp.sites", "onnx_cp.splice", "onnx_cp.parallel_fit")),
    ("measurement", ("onnx_cp.bench", "onnx_cp.measure")),
    ("training", ("onnx_cp.finetune",)),
    ("data", ("onnx_cp.calibrate", "onnx_cp.accuracy", "onnx_cp.quantize")),
    ("selection", ("onnx_cp.ranks",)),
    ("rewrite", ("onnx_cp.config", "onnx_cp.stages", "onnx_cp.rewrite", "onnx_cp.report_tables",
                 "onnx_cp.report_html", "onnx_cp.report_markdown")),
    ("tools", ("onnx_cp.inspect", "onnx_cp.evaluate", "onnx_cp.testing")),
    ("interface", ("onnx_cp.commands", "onnx_cp.cli", "onnx_cp.__main__", "onnx_cp")),
)


def layer_of(module: str) -> int | None:
    """The index of the layer whose longest prefix names ``module`` (None: not placed)."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def test_the_layer_check_sees_an_import_that_runs_back_up():
    assert layer_of("onnx_cp.ranks.budget") > layer_of("onnx_cp.decompositions.cp")
    assert layer_of("onnx_cp") == len(LAYERS) - 1 and layer_of("onnx_cp.report_html") > layer_of("onnx_cp.report")


def test_every_module_is_placed_and_no_import_runs_back_up():
    modules = _modules()
    unplaced = sorted(m for m in modules if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"
    upward = []
    for name, (path, is_package) in modules.items():
        for target in _imports(name, path, is_package, modules):
            if target != name and layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))

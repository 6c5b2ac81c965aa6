"""The package's import graph has no circles (issue 16): every `import` and `from ... import` in
webllm_py/**.py, module level or inside a function (a deferred import still ties the two modules),
read with ast; a circle fails the test with its modules in order."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package` (a package is its __init__.py)."""
    out = {}
    for p in package.rglob("*.py"):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports. `from a import b` counts b where b is a module,
    else a; importing a.b.c is an edge to a.b.c only (its parents' __init__ run too, but a parent
    that re-exports its children would make every child a circle with it)."""
    mods = module_names(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]) if node.level else node.module
                base = base.rstrip(".")
                edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_package_has_no_import_cycle():
    graph = import_graph(ROOT / "webllm_py")
    assert len(graph) > 50 and "webllm_py.models.families" in graph["webllm_py.engine"] | graph["webllm_py.models"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_sees_deferred_and_relative_imports(tmp_path):
    """The walker itself: a circle closed only by an import inside a function, two levels apart."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import f\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_test_modules_do_not_import_each_other():
    """Shared test helpers live in helper modules (tests/*_helpers.py, gguf_models.py, ...), not in test files."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                last = (node.module or "").split(".")[-1]
                names = [last] if node.module else [a.name for a in node.names]
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("test_")]
    assert offenders == []


# docs/architecture.md's layers, top to bottom: a module imports only its own layer and those below.
LAYERS = [
    {"worker"},
    {"__init__", "api", "generate", "structured", "browser_models", "default_model"},
    {"engine", "sampling"},
    {"models", "checkpoint"},
    {"linear", "attention", "kv_cache", "ops", "weights"},
    {"planner"},
    {"gpu"},
    {"kernels"},
    {"tokenizer"},
    {"formats", "model_url"},
    {"errors"},
]
DEV_ONLY = {"__main__", "bench", "serve", "static_site", "wheel", "dawn", "jupyterlite"}


def test_imports_go_down_the_layers():
    graph = import_graph(ROOT / "webllm_py")
    depth = {name: i for i, layer in enumerate(LAYERS) for name in layer}

    def layer(module: str) -> int | None:
        top = (module.split(".") + ["__init__"])[1]
        assert top in depth or top in DEV_ONLY, f"{module} is in no layer of docs/architecture.md"
        return depth.get(top)

    upward = [
        f"{a} -> {b}"
        for a, bs in graph.items()
        for b in bs
        if layer(a) is not None and layer(b) is not None and layer(b) < layer(a)
    ]
    assert upward == []


def test_browser_wheel_holds_no_host_only_module():
    """The wheel Pyodide installs leaves out the host-only modules (wheel.HOST_ONLY), and none of the
    modules it does hold imports one (it would fail in the browser with ModuleNotFoundError)."""
    from webllm_py.wheel import HOST_ONLY, package_files

    in_wheel = {arc for arc, _ in package_files()}
    host = {"webllm_py." + name.removesuffix(".py") for name in HOST_ONLY}
    assert not {"webllm_py/" + name for name in HOST_ONLY} & in_wheel
    assert {"webllm_py/bench.py", "webllm_py/worker.py", "webllm_py/shaders/matmul_i8.wgsl.j2"} <= in_wheel
    graph = import_graph(ROOT / "webllm_py")
    bad = [f"{a} -> {b}" for a, bs in graph.items() if a not in host for b in bs if b in host]
    assert bad == []

"""No import circles inside engine/: a lazy import inside a function that closes a loop is still
a loop. Checked on the source (AST), so imports that only run inside a function count too."""

from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"
# The one known loop; it ends when StopRequested and attach_log move into engine.runs.lifecycle.


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ENGINE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The engine modules that `name` imports anywhere in its file (top level or inside functions).

    `from engine.x import y` is an edge to engine.x.y when y is a module, else to engine.x;
    relative imports are resolved against the module's package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def one_cycle(graph: dict[str, set[str]], group: frozenset[str]) -> list[str]:
    """A concrete loop through the group, e.g. [a, b, c, a], for the failure message."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no loop found in {sorted(group)}")


def describe(graph: dict[str, set[str]], groups: list[frozenset[str]]) -> str:
    return "; ".join(" -> ".join(one_cycle(graph, group)) for group in groups)


def test_the_walk_sees_nested_and_lazy_imports():
    graph = import_graph()
    assert "engine.models.qwen2_audio.runtime" in graph  # sub-packages are walked
    # engine.tasks.demo imports these only inside its functions
    assert {"engine.data.synth", "engine.tasks.train", "engine.tasks.opro"} <= graph["engine.tasks.demo"]


def test_the_cycle_finder_finds_a_lazy_loop(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (group,) = strongly_connected(graph)
    assert group == {"a", "b", "c"}
    assert one_cycle(graph, group) == ["a", "b", "c", "a"]
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "x.py").write_text("def f():\n    from . import y\n    from .y import thing\n")
    assert imports_of("pkg.x", package / "x.py", {"pkg.x", "pkg.y"}) == {"pkg.y"}


def test_engine_has_no_import_cycles():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, f"import cycles in engine/: {describe(graph, cycles)}"


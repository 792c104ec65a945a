"""The ncx modules import each other without a cycle.

Every import counts, module-level or inside a function: a function-local
import that only dodges a cycle at load time still ties the two modules
together.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = "ncx"
# The package as imported (the source tree, or an installed wheel).
PACKAGE_DIR = Path(importlib.util.find_spec(PACKAGE).origin).parent


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The modules of the package (names in `modules`) that `source`, one
    module of the package, imports anywhere: `from . import x`, `from .x
    import y`, `from ncx import x`, `from ncx.x import y`, `import ncx.x`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE:
                rest = node.module.split(".")[1:]
            elif node.level == 1:
                rest = node.module.split(".") if node.module else []
            else:
                continue
            if rest:
                found.add(rest[0])
            else:  # `from . import x, y`: submodules, or names of the package itself
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
    return found & modules


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module name -> the package modules it imports (itself left out)."""
    names = set(sources)
    return {name: imported_modules(text, names) - {name} for name, text in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def package_sources() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(PACKAGE_DIR.glob("*.py"))}


def test_ncx_imports_have_no_cycle():
    graph = import_graph(package_sources())
    assert len(graph) > 10 and any(graph.values())  # the package was found and parsed
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_detects_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}) is None
    assert find_cycle({}) is None


def test_function_level_and_every_import_form_count():
    sources = {
        "a": "from .b import thing\n",
        "b": "def f():\n    from . import c\n    return c\n",
        "c": "import os\nfrom ncx.d import x\n",
        "d": "class K:\n    def g(self):\n        import ncx.a\n",
        "e": "from . import __version__\nfrom .. import elsewhere\nfrom ncxx import y\n",
        "__init__": "import torch\n",
    }
    graph = import_graph(sources)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"a"}, "e": {"__init__"}, "__init__": set()}
    assert find_cycle(graph) == ["a", "b", "c", "d", "a"]
    del sources["d"]
    assert find_cycle(import_graph(sources)) is None

"""No import circle between the modules of ``nodes/``: the run context is the ground floor, the bridges
and adapters build on it, and nothing below imports what stands on it.

Imports are read from the source with ``ast`` (inside functions too: a deferred import is still a circle
in the design). A package's ``__init__`` loading its own submodules is not counted: that is how a
package lists its members, while a submodule importing its package's base classes is the usual layout.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_names(pkg_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name (relative to ``pkg_dir``'s parent) -> (file, is a package ``__init__``)."""
    mods = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        parts = list(path.relative_to(pkg_dir.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def import_graph(pkg_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (relative imports, at any depth in the file)."""
    mods = _module_names(pkg_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            targets = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
            out.update(t for t in targets if t in mods)
        if is_pkg:  # the package loading its own members
            out = {t for t in out if not t.startswith(name + ".")}
        graph[name] = out - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``a -> b -> ... -> a``), or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_nodes_have_no_import_cycle():
    graph = import_graph(ROOT / "nodes")
    assert "nodes.run_context" in graph and "nodes.runtime_bridge" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in nodes/: " + " -> ".join(cycle)


def test_run_context_imports_no_bridge_or_adapter():
    graph = import_graph(ROOT / "nodes")
    assert graph["nodes.run_context"] == set(), graph["nodes.run_context"]


def test_the_check_finds_a_circle(tmp_path):
    """The checker itself: a deferred import back (as memory_bridge once did) is a circle; a package
    loading its own submodule that imports the package is not."""
    pkg = tmp_path / "nodes"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import X\n")
    (pkg / "sub" / "__init__.py").write_text("def load():\n    from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from . import Base\nfrom ..c import Y\n")
    (pkg / "c.py").write_text("")
    graph = import_graph(pkg)
    assert graph["nodes.sub.leaf"] == {"nodes.sub", "nodes.c"} and graph["nodes.sub"] == set()
    assert find_cycle(graph) == ["nodes.a", "nodes.b", "nodes.a"]
    (pkg / "b.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None

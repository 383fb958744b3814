"""No import cycle between medret's modules (issue 22 item 4: index/dense.py <-> index/gpu_topk.py was one).

The graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for every ``import`` of a
medret module ``b`` anywhere in ``a`` -- at the top, or inside a function (a lazy import is still an arrow: it
only moves the cycle to run time) -- except under ``if TYPE_CHECKING:``, which never runs. ``from pkg import
name`` points at ``pkg.name`` when that is a module, else at ``pkg``. The cycle search is checked on a graph
written in the test, so that it can fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import medret

ROOT = Path(medret.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        its = [iter(sorted(graph.get(start, ())))]
        while its:
            nxt = next(its[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                its.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                its.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_search_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_the_graph_sees_lazy_imports_and_skips_type_checking(tmp_path):
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medret.index import dense\n"
           "def f():\n    from medret.index.gpu_topk import exact_topk\n    from medret import optional\n")
    p = tmp_path / "m.py"
    p.write_text(src)
    mods = {"medret.index.dense", "medret.index.gpu_topk", "medret.optional", "medret.index", "medret"}
    assert imports_of("medret.index.m", p, mods) == {"medret.index.gpu_topk", "medret.optional"}


def test_medret_has_no_import_cycle():
    graph = import_graph()
    assert "medret.index.gpu_topk" in graph["medret.index.exact"]  # the graph is read (a lazy import counts)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

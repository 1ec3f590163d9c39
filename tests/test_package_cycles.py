"""No import circle between ftcore's packages (ftcore.data, ftcore.models, ..., and its top-level modules), found
from the code rather than a hand-kept order: imports inside functions count too (grimp reads them all), so a circle
cannot hide behind a lazy import."""

from __future__ import annotations

import grimp


def package_imports(graph) -> dict[str, set[str]]:
    """ftcore.<package> -> the ftcore packages its modules import."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if package(imported) != package(module) and imported.startswith("ftcore."):
                edges.setdefault(package(module), set()).add(package(imported))
    return edges


def a_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its packages in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_search_finds_a_circle():
    assert a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert a_circle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_no_import_circle_between_ftcore_packages():
    circle = a_circle(package_imports(grimp.build_graph("ftcore")))
    assert circle is None, f"import circle: {' -> '.join(circle)}; move the shared part below both"

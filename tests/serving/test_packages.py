"""serving's sub-packages import each other one way (docs/architecture.md, "serving by concern").

Every import of every module under ``serving/`` (module level and inside functions) is read with
:func:`test_layers.imported_modules`.  A sub-package (``serving.http``) and each module at the top of
``serving`` (``serving.store``) are one node; no two nodes may reach each other, and no two modules
either.
"""
from __future__ import annotations

from collections import defaultdict

from test_layers import ROOT, imported_modules

SERVING = ROOT / "serving"


def module_imports() -> dict[str, set[str]]:
    """serving module -> the serving modules it imports (itself and the bare package left out)."""
    graph = {}
    for path in sorted(SERVING.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {name for name in imported_modules(path, module)
                         if name.startswith("serving.")} - {module}
    return graph


def node(module: str) -> str:
    """``serving.http.ingress`` -> ``serving.http``; ``serving.store`` stays ``serving.store``."""
    return ".".join(module.split(".")[:2])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def package_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, names in graph.items():
        packages[node(module)].update(node(name) for name in names if node(name) != node(module))
    return dict(packages)


def test_no_import_circle_between_serving_packages():
    assert circles(package_imports(module_imports())) == []


def test_no_import_circle_between_serving_modules():
    assert circles(module_imports()) == []


def test_the_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert package_imports({"serving.http.ingress": {"serving.http.routes", "serving.store"},
                            "serving.store": set()}) == {"serving.http": {"serving.store"},
                                                         "serving.store": set()}

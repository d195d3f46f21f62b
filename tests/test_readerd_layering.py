"""readerd's own parts import one way, with no cycle, lazy imports included.

The parts, lowest first: the base modules (``config``, ``errors``, ``events``, ``exitcodes``,
``logging``), ``ops`` (sd_notify, watchdog, metrics, the pseudonym key, deadlines), ``bus``, ``reading``
(card sessions and backends, which publish on the bus), ``auth`` (which drives card sessions), ``plugin``
(the host reads the event log, never a reader), ``daemon`` (wires them), and on top the front ends
``cli``, ``web`` and ``testing``. Imports are read from the source (every ``import`` statement, inside
functions and ``TYPE_CHECKING`` blocks too), so a cycle hidden behind a late import fails here.
Cost: well under a second (ast only, nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "readerd"

BASE = {
    "readerd",
    "readerd.config",
    "readerd.errors",
    "readerd.events",
    "readerd.exitcodes",
    "readerd.logging",
}

#: The parts each part may import (besides itself and the base modules).
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "ops": set(),
    "bus": {"ops"},
    "reading": {"ops", "bus"},
    "auth": {"ops", "bus", "reading"},
    "plugin": {"ops", "bus"},
    "daemon": {"ops", "bus", "reading", "auth", "plugin"},
    "web": {"ops", "bus"},
    "cli": {"ops", "bus", "reading", "auth", "plugin", "daemon", "web"},
    "testing": {"ops", "bus", "reading", "auth", "plugin", "daemon"},
}

#: Plain modules allowed at readerd's top level (the rest live in sub-packages).
MAX_TOP_MODULES = 12


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path = ROOT) -> dict[str, Path]:
    return {_module_name(path, root): path for path in (root / "readerd").rglob("*.py")}


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the readerd modules it imports: ``from a.b import c`` counts as ``a.b.c`` when that is
    a module, else as ``a.b``."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "readerd")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "readerd":
                assert node.level == 0, f"{module}: relative import"
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else resolve(node.module))
        graph[module] = {m for m in found if m is not None and m != module}
    return graph


def _part(module: str) -> str:
    if module in BASE:
        return "base"
    return module.split(".")[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_readerd_modules() -> None:
    graph = _imports(_modules())
    assert len(graph) > 40, "readerd's modules went missing"
    assert _cycles(graph) == []


def test_parts_import_only_the_parts_below_them() -> None:
    graph = _imports(_modules())
    wrong = []
    for module, imported in sorted(graph.items()):
        part = _part(module)
        assert part in ALLOWED, f"{module}: a new part of readerd? add it to ALLOWED with its rank"
        for other in sorted(imported):
            other_part = _part(other)
            if other_part not in (part, "base") and other_part not in ALLOWED[part]:
                wrong.append(f"{module} ({part}) imports {other} ({other_part})")
    assert wrong == []


def test_plugin_modules_do_not_import_the_plugin_face() -> None:
    """``readerd.plugin`` re-exports the API for plugins; the daemon's modules import the modules that
    define it, or the face would import itself half-initialised."""
    graph = _imports(_modules())
    inside = [m for m in graph if m.startswith("readerd.plugin.")]
    assert [m for m in inside if "readerd.plugin" in graph[m]] == []


def test_readerd_has_few_top_level_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The reader of imports itself: an import inside a function or a TYPE_CHECKING block is an edge."""
    package = tmp_path / "readerd"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from readerd import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import readerd.a\n"
    )
    graph = _imports(_modules(tmp_path))
    assert graph["readerd.a"] == {"readerd.b"}
    assert graph["readerd.b"] == {"readerd.a"}
    assert _cycles(graph) == [["readerd.a", "readerd.b"]]


def test_plugins_use_only_the_plugin_face() -> None:
    """The built-in plugins and the example plugin import from ``readerd.plugin`` alone, as a
    third-party plugin should: the daemon's other modules may move without breaking them."""
    sources = [
        *(ROOT / "plugins").rglob("*.py"),
        *(ROOT / "docs/examples/readerd-hello/readerd_hello").rglob("*.py"),
    ]
    assert len(sources) > 15, "the plugins went missing"
    wrong = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong += [
                f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)} imports {name}"
                for name in names
                if name.split(".")[0] == "readerd" and name != "readerd.plugin"
            ]
    assert wrong == []

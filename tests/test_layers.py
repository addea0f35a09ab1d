"""The package layers (see ../shared/ARCHITECTURE.md), checked on the source:
each package imports only the layers below it, and no module of ``sim/`` imports
another in a loop (counting imports inside functions and TYPE_CHECKING blocks:
a cycle hidden in a function is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package folder -> evtwin packages it must never import.
FORBIDDEN = {
    "ocppj": ("evtwin.sim", "evtwin.agents", "evtwin.csms", "evtwin.grid", "evtwin.transports",
              "asyncio", "websockets"),
    "transports": ("evtwin.sim", "evtwin.agents", "evtwin.csms", "evtwin.grid"),
    "csms": ("evtwin.sim", "evtwin.agents", "evtwin.transports"),
    "agents": ("evtwin.sim", "evtwin.csms"),
    "grid": ("evtwin.sim", "evtwin.agents", "evtwin.csms", "evtwin.transports"),
}
PACKAGE_OF = {"sim": "evtwin.sim", "agents": "evtwin.agents", "csms": "evtwin.csms",
              "grid": "evtwin.grid", "ocppj": "evtwin.ocppj", "transports": "evtwin.transports"}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                if node.module:
                    out.add(f"{base}.{node.module}")
                else:
                    out.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                out.add(node.module)
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_package_imports_only_the_layers_below(folder: str) -> None:
    bad = [f"{path.name} imports {name}"
           for path in sorted((ROOT / folder).glob("*.py"))
           for name in sorted(_imports(path, PACKAGE_OF[folder]))
           if name.startswith(FORBIDDEN[folder])
           and not (name == "asyncio" and folder != "ocppj")]
    assert bad == []


def test_no_import_cycle_between_the_modules_of_sim() -> None:
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "sim").glob("*.py"):
        names = _imports(path, "evtwin.sim")
        graph[path.stem] = {n.split(".")[2] for n in names
                            if n.startswith("evtwin.sim.") and n.count(".") >= 2}
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}
    # Depth-first search for a back edge.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
    assert "kpis" in graph and "records" in graph and "overrides" in graph


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The check itself can fail: two modules importing each other are found."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    assert _imports(tmp_path / "a.py", "evtwin.sim") == {"evtwin.sim.b"}
    assert _imports(tmp_path / "b.py", "evtwin.sim") == {"evtwin.sim.a"}

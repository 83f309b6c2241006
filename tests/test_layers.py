"""The layers of host_tools, as the tree shows them: no import cycles, one-way dependencies, no sys.path tricks.

cli/ is the top (only it and demos/ may use the virtual board in sim/ for `sim:NAME` ports);
sim/ uses the product (esp/, image/, device/), the product never uses sim/ or cli/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "host_tools"
MAY_USE_SIM = ("host_tools.sim", "host_tools.cli", "host_tools.demos")
BOARD = HOST / "sim" / "board"  # MicroPython modules of the virtual board, not host_tools modules


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(HOST.rglob("*.py")) if BOARD not in p.parents}


def resolve(name: str, known: set[str]) -> str | None:
    # The host_tools module an import names: itself, or its nearest parent package that exists.
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            if n.startswith("host_tools") and (target := resolve(n, known)) is not None:
                found.add(target)
    return found


TREES = modules()
GRAPH = {name: imports(tree, set(TREES)) for name, tree in TREES.items()}


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_no_import_cycles():
    graph = {m: {t for t in targets if t != m and not m.startswith(t + ".")} for m, targets in GRAPH.items()}
    # A package's __init__ importing its own submodules (cli/__init__ importing cli.sim ...) is a tree, not a cycle.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_cli_and_demos_use_the_virtual_board():
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts
           if within(t, ("host_tools.sim",)) and not within(m, MAY_USE_SIM)]
    assert not bad, bad


def test_nothing_imports_the_cli():
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts
           if within(t, ("host_tools.cli",)) and not within(m, ("host_tools.cli",))]
    assert not bad, bad


def test_no_sys_path_manipulation():
    bad = []
    for path in sorted(HOST.rglob("*.py")):
        if BOARD in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"sys.path used in {bad}"


def test_the_graph_sees_the_tree():
    # The checks above only mean something if the walk finds the modules and their imports.
    assert "host_tools.protocol" in GRAPH["host_tools.server.mqtt_service"]
    assert "host_tools.esp.espidf" in GRAPH["host_tools.esp.app_image"]
    assert "host_tools.sim.ports" in GRAPH["host_tools.cli.board"]

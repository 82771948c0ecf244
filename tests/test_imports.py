"""The import graph of taskcloud: no circle, value types at the bottom, and what an
SSH host's agent imports (``taskcloud.hostside``) kept to what a worker needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskcloud

PACKAGE = Path(taskcloud.__file__).parent

#: What ``taskcloud.hostside`` may import, at the top or in a function.
HOSTSIDE = {"taskcloud.processes", "taskcloud.providers", "taskcloud.providers.nanny"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["taskcloud", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` but what only type checkers import
    (the body of ``if TYPE_CHECKING:``)."""
    for child in ast.iter_child_nodes(node):
        kept: list[ast.AST] = [child]
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            kept = list(child.orelse)
        for node in kept:
            yield node
            yield from _nodes(node)


def _targets(node: ast.AST, package: str) -> Iterator[str]:
    """The taskcloud modules one import statement names."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in MODULES)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, *([base] if base else [])])
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES or base in MODULES:
                yield full if full in MODULES else base


def _imports(module: str, path: Path) -> set[str]:
    """The taskcloud modules ``module`` imports, at the top or in a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {target for node in _nodes(tree) for target in _targets(node, package)}
    return found - {module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for imported in GRAPH[todo.pop()]:
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_the_graph_is_read() -> None:
    assert "taskcloud.providers.kinds" in GRAPH["taskcloud.cli"]
    assert "taskcloud.units" in GRAPH["taskcloud.specs"]


def test_no_import_circle() -> None:
    circles = sorted(
        module for module in GRAPH if module != "taskcloud" and module in _reachable(module)
    )
    assert circles == []


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("taskcloud.errors", set()),
        ("taskcloud.units", {"taskcloud.errors"}),
        ("taskcloud.specs", {"taskcloud.errors", "taskcloud.units"}),
        (
            "taskcloud.capacity",
            {"taskcloud.errors", "taskcloud.processes", "taskcloud.store", "taskcloud.units"},
        ),
        ("taskcloud.processes", set()),
        ("taskcloud.hostside", HOSTSIDE),
    ],
)
def test_low_modules_import_only_what_is_below_them(module: str, allowed: set[str]) -> None:
    assert _reachable(module) - allowed == set()


def test_hostside_loads_only_what_a_worker_needs() -> None:
    """An SSH host's agent, with its nanny class loaded, imports no provider module."""
    script = (
        "import sys, taskcloud.hostside, taskcloud.providers.nanny\n"
        "print(sorted(m for m in sys.modules if m.startswith('taskcloud')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert loaded <= {"taskcloud", "taskcloud.hostside", *HOSTSIDE}

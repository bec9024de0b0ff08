"""The shape of the core (docs/architecture.md): every module imports on its own, the
import graph between them has no cycle, and each module is small and declares ``__all__``."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "metaprotocol" / "core"
MODULES = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
HARD_LIMIT = 700  # lines (STYLE: "small modules")


def _runtime_imports(module: str) -> set[str]:
    """The core modules ``module`` imports when it is loaded: module-level imports, not
    those under ``if TYPE_CHECKING:`` (annotations only) or inside functions."""
    tree = ast.parse((CORE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "metaprotocol.core":
                names = [alias.name for alias in node.names]
            elif node.module.startswith("metaprotocol.core."):
                names = [node.module.split(".")[2]]
        elif isinstance(node, ast.Import):
            names = [
                alias.name.split(".")[2]
                for alias in node.names
                if alias.name.startswith("metaprotocol.core.")
            ]
        found.update(name for name in names if name in MODULES)
    return found


def test_the_core_import_graph_has_no_cycle() -> None:
    graph = {module: _runtime_imports(module) for module in MODULES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message
        pytest.fail(f"import cycle in core/: {exc.args[1]}")
    assert set(order) == set(MODULES)
    # The facade is on top: nothing in the core imports it.
    assert not [m for m, deps in graph.items() if "proxy" in deps]


def test_the_collaborators_depend_only_downwards() -> None:
    """The engine's collaborators, lowest first: each may import only those before it."""
    layers = [
        "context",
        "flow",
        "merging",
        "requests",
        "replies",
        "pools",
        "sender",
        "router",
        "filterchain",
        "upstream_side",
        "downstream",
        "proxy",
    ]
    for i, module in enumerate(layers):
        above = set(layers[i:])
        assert not _runtime_imports(module) & above, module


@pytest.mark.parametrize("module", MODULES)
def test_each_core_module_is_small_and_declares_all(module: str) -> None:
    source = (CORE / f"{module}.py").read_text()
    assert len(source.splitlines()) < HARD_LIMIT
    tree = ast.parse(source)
    assert any(
        isinstance(node, ast.Assign | ast.AnnAssign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in _targets(node))
        for node in tree.body
    ), f"core/{module}.py has no __all__"


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return node.targets if isinstance(node, ast.Assign) else [node.target]


@pytest.mark.parametrize("module", MODULES)
def test_each_core_module_imports_on_its_own(module: str) -> None:
    """Each module, imported first in a fresh interpreter, loads (no hidden order)."""
    code = f"import metaprotocol.core.{module}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

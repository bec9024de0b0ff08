"""The rule of purity: nothing under core/ or codecs/ imports IO, clocks, threads or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import metaprotocol

FORBIDDEN = {
    "socket", "ssl", "asyncio", "anyio", "trio", "selectors", "threading", "time", "random"
}  # fmt: skip
PACKAGE = Path(metaprotocol.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_and_codecs_import_no_io() -> None:
    files = [*(PACKAGE / "core").rglob("*.py"), *(PACKAGE / "codecs").rglob("*.py")]
    assert len(files) > 10
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(imported_roots(f) & FORBIDDEN)
        for f in files
        if imported_roots(f) & FORBIDDEN
    }
    assert offenders == {}


def test_the_checker_catches_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom time import monotonic\nimport socket as s\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "socket"}

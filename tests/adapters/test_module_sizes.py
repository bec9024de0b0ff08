"""The adapters stay small: every module under ``adapters/`` is under 300 lines (issue 13's
bound for the three adapters, kept for the shared modules and the adapters' own parts), so
what an adapter repeats from another shows up as growth here."""

from __future__ import annotations

from pathlib import Path

import metaprotocol.adapters

LIMIT = 300
ADAPTERS = Path(metaprotocol.adapters.__file__).parent


def test_every_adapter_module_is_under_the_bound() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in ADAPTERS.glob("*.py")}
    assert {"asyncio.py", "anyio.py", "blocking.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n >= LIMIT} == {}

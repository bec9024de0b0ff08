"""``python -m metaprotocol``: the same command line as the ``metaprotocol`` script."""

from __future__ import annotations

from metaprotocol.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())

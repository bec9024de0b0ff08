"""A fuzz target with a planted bug, for the test that the runner reports findings."""

from __future__ import annotations

__all__ = ["harness", "seeds"]


def harness(data: bytes) -> None:
    if len(data) > 3 and data[3] == 0xFF:
        raise ValueError("found the needle")


def seeds() -> list[bytes]:
    return [b"abcd"]

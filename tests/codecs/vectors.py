"""The shared wire vectors (frames captured from real Dubbo and Thrift implementations).

A copy of ``shared/vectors`` lives in ``tests/codecs/data/vectors`` (with its README and
each frame's provenance) so a clean clone tests against them without anything outside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["VECTORS_PATH", "load_vectors"]

VECTORS_PATH = Path(__file__).parent / "data" / "vectors" / "wire-vectors.json"


def load_vectors(protocol: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
    found = [v for v in data if v["protocol"] == protocol]
    assert found, f"no {protocol} vectors in {VECTORS_PATH}"
    return found

"""Public test helpers: the Playbook harness, the codec conformance kit and codec benchmarks.

Submodules load on first use, so importing the conformance kit never pulls in the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metaprotocol.testing.codecbench import Result, measure_decode, measure_encode
    from metaprotocol.testing.conformance import CHECKS, CONFORMANCE_MUTATION, check_codec
    from metaprotocol.testing.playbook import ANY, Playbook, PlaybookError, placeholder

__all__ = [
    "ANY",
    "CHECKS",
    "CONFORMANCE_MUTATION",
    "Playbook",
    "PlaybookError",
    "Result",
    "check_codec",
    "measure_decode",
    "measure_encode",
    "placeholder",
]

_HOME = {
    "ANY": "playbook",
    "Playbook": "playbook",
    "PlaybookError": "playbook",
    "placeholder": "playbook",
    "CHECKS": "conformance",
    "CONFORMANCE_MUTATION": "conformance",
    "check_codec": "conformance",
    "Result": "codecbench",
    "measure_decode": "codecbench",
    "measure_encode": "codecbench",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'metaprotocol.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"metaprotocol.testing.{module}"), name)

"""Public test helpers: the Playbook harness, the codec conformance kit and codec benchmarks."""

from __future__ import annotations

from metaprotocol.testing.playbook import ANY, Playbook, PlaybookError

__all__ = ["ANY", "Playbook", "PlaybookError"]

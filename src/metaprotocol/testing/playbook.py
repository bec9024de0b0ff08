"""Playbook: protocol-trace tests for the core. ``>>`` feeds an event, ``<<`` expects an output.

    pb = Playbook(proxy)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, request)
    pb << OpenUpstream(-1, "127.0.0.1", 9000)
    pb << None                      # nothing more was emitted
    pb.done()                       # every output was expected; fails otherwise

A playbook left with outputs nobody expected fails its test even without ``done()``: the
suite's conftest checks ``unfinished_playbooks()`` after every test.

Observer events (Decoded, Routed, ...) are skipped unless the playbook is built with
``observers=True``. On a mismatch the assertion shows the whole trace so far, fed events
(``>>``) next to what the proxy emitted (``<<``), with the unexpected line marked.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

from metaprotocol.core.events import Event, TimePassed
from metaprotocol.core.outputs import INSTRUCTION_TYPES, Output
from metaprotocol.core.proxy import Proxy

__all__ = ["ANY", "Playbook", "PlaybookError", "unfinished_playbooks"]


class _Any:
    """Matches any value in an expected output's field, e.g. ``Write(1, ANY)``."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class PlaybookError(AssertionError):
    pass


def _short(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 150 else text[:147] + "..."


_created: list[weakref.ref[Playbook]] = []


def unfinished_playbooks() -> list[str]:
    """Traces of every playbook made since the last call that still has unexpected outputs.

    A test suite calls this after each test (``tests/conftest.py`` does, in an autouse
    fixture) so a playbook whose last outputs were never expected fails its test.
    """
    problems: list[str] = []
    for ref in _created:
        pb = ref()
        if pb is not None and pb.pending:
            try:
                pb.done()
            except PlaybookError as exc:
                problems.append(str(exc))
    _created.clear()
    return problems


class Playbook:
    def __init__(self, proxy: Proxy, *, now: float = 0.0, observers: bool = False) -> None:
        _created.append(weakref.ref(self))
        self.proxy = proxy
        self.now = now
        self.observers = observers
        self.pending: deque[Output] = deque()
        self.trace: list[str] = []

    # -- feeding -----------------------------------------------------------------------------

    def __rshift__(self, event: Event) -> Playbook:
        self.trace.append(f">> {_short(event)}")
        for output in self.proxy.handle(event, self.now):
            if self.observers or isinstance(output, INSTRUCTION_TYPES):
                self.pending.append(output)
        return self

    def tick(self, seconds: float) -> Playbook:
        """Advance the clock and feed ``TimePassed``."""
        self.now += seconds
        return self >> TimePassed()

    # -- expecting ---------------------------------------------------------------------------

    def __lshift__(self, expected: Output | None) -> Playbook:
        if expected is None:
            if self.pending:
                self._fail(f"expected nothing more, but got {_short(self.pending[0])}")
            self.trace.append("<< None")
            return self
        if not self.pending:
            self._fail(f"expected {_short(expected)}, but nothing was emitted")
        actual = self.pending.popleft()
        if type(actual) is not type(expected) or not _fields_equal(expected, actual):
            self.pending.appendleft(actual)
            self._fail(f"expected {_short(expected)}\n      got {_short(actual)}")
        self.trace.append(f"<< {_short(actual)}")
        return self

    def take(self) -> Output:
        """Pop the next output whatever it is (for values a test wants to inspect)."""
        if not self.pending:
            self._fail("expected an output, but nothing was emitted")
        actual = self.pending.popleft()
        self.trace.append(f"<< {_short(actual)}")
        return actual

    def done(self) -> None:
        """Fail if any output was not expected."""
        if self.pending:
            self._fail(f"unexpected outputs left: {[_short(p) for p in self.pending]}")

    def assert_clean(self) -> None:
        """Every connection and request table of the proxy is empty again."""
        self.done()
        proxy = self.proxy
        left = {
            "downstreams": len(proxy.downstreams),
            "upstreams": len(proxy.upstreams),
            "requests": proxy.request_count(),
            "calls": len(proxy.calls),
            "timers": proxy.live_timers(),
        }
        leftovers = {k: v for k, v in left.items() if v}
        if leftovers:
            self._fail(f"state left behind: {leftovers}")

    def _fail(self, message: str) -> None:
        lines = [*self.trace, f"!! {message}"]
        if self.pending:
            lines.append("   still pending: " + ", ".join(_short(p) for p in self.pending))
        raise PlaybookError("playbook mismatch:\n  " + "\n  ".join(lines))


def _fields_equal(expected: Output, actual: Output) -> bool:
    for name in expected.__dataclass_fields__:
        if getattr(expected, name) != getattr(actual, name):
            return False
    return True

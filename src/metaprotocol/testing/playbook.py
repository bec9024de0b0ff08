"""Playbook: protocol-trace tests for the core. ``>>`` feeds an event, ``<<`` expects an output.

    pb = Playbook(proxy)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, request)
    pb << OpenUpstream(-1, "127.0.0.1", 9000)
    pb << None                      # nothing more was emitted
    pb.done()                       # every output was expected; fails otherwise

A playbook left with outputs nobody expected fails its test even without ``done()``: the
suite's conftest checks ``unfinished_playbooks()`` after every test.

Upstream connection ids are the core's to choose (negative, in ``OpenUpstream``). A trace need
not pin them: a ``placeholder()`` in an expected output binds to the value it meets there,
and later expectations and fed events use the bound value (like mitmproxy's Placeholder)::

    up = placeholder("up")
    pb << OpenUpstream(up, "127.0.0.1", 9000)   # binds up to the id the core chose
    pb >> UpstreamConnected(up)                 # fed with that id
    pb << Write(up, request)

Nor does a trace pin write granularity: consecutive ``Write``s to one connection are merged
before they are compared, and an expected ``Write`` whose bytes begin the pending one
consumes just those bytes, so one write or several with the same bytes read the same.

Observer events (Decoded, Routed, ...) are skipped unless the playbook is built with
``observers=True``. On a mismatch the assertion shows the whole trace so far, fed events
(``>>``) next to what the proxy emitted (``<<``), with the unexpected line marked.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import deque
from typing import Any, NoReturn

from metaprotocol.core.events import Event, TimePassed
from metaprotocol.core.outputs import INSTRUCTION_TYPES, Output, Write
from metaprotocol.core.proxy import Proxy

__all__ = [
    "ANY",
    "Placeholder",
    "Playbook",
    "PlaybookError",
    "placeholder",
    "unfinished_playbooks",
]


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


class Placeholder:
    """A value a trace does not pin (an upstream connection id): unbound until an expected
    output's field meets it, then that value for the rest of the trace. Build one with
    :func:`placeholder`, which is typed ``Any`` so it fits any field."""

    __slots__ = ("_value", "bound", "name")

    def __init__(self, name: str = "") -> None:
        self.name = name or f"placeholder@{id(self):x}"
        self.bound = False
        self._value: object = None

    @property
    def value(self) -> Any:
        """The bound value; ``PlaybookError`` if nothing bound it yet."""
        if not self.bound:
            raise PlaybookError(f"placeholder {self.name!r} is not bound yet")
        return self._value

    def bind(self, value: object) -> None:
        self._value, self.bound = value, True

    def __repr__(self) -> str:
        return f"<{self.name}={self._value!r}>" if self.bound else f"<{self.name}>"


def placeholder(name: str = "") -> Any:
    """A new unbound :class:`Placeholder`, e.g. ``up = placeholder("up")``."""
    return Placeholder(name)


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
        self._placeholders: list[Placeholder] = []  # bound by this playbook's expectations

    # -- feeding -----------------------------------------------------------------------------

    def __rshift__(self, event: Event) -> Playbook:
        event = self._resolved(event)
        self.trace.append(f">> {_short(event)}")
        pending = self.pending
        for output in self.proxy.handle(event, self.now):
            if not self.observers and not isinstance(output, INSTRUCTION_TYPES):
                continue
            last = pending[-1] if pending else None
            if type(output) is Write and type(last) is Write and last.conn == output.conn:
                pending[-1] = Write(output.conn, last.data + output.data)  # one stream of bytes
            else:
                pending.append(output)
        return self

    def _resolved(self, event: Event) -> Event:
        """``event`` with every placeholder field replaced by its bound value."""
        changes: dict[str, object] = {}
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            if isinstance(value, Placeholder):
                if not value.bound:
                    self._fail(
                        f"cannot feed {_short(event)}: placeholder {value.name!r} is not bound "
                        "(expect the output that carries its value first)"
                    )
                changes[field.name] = value.value
        if not changes:
            return event
        resolved: Event = dataclasses.replace(event, **changes)  # type: ignore[arg-type]
        return resolved

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
        actual = self.pending[0]
        bindings = _match(expected, actual) if type(actual) is type(expected) else None
        if bindings is None:
            self._fail(f"expected {_short(expected)}\n      got {_short(actual)}")
        self._bind(bindings, expected)
        self.pending.popleft()
        if isinstance(actual, Write) and isinstance(expected, Write):
            rest = _rest_of_write(expected, actual)
            if rest:  # the expected bytes began a longer (merged) write: the rest stays
                self.pending.appendleft(rest)
                actual = Write(actual.conn, actual.data[: len(actual.data) - len(rest.data)])
        self.trace.append(f"<< {_short(actual)}")
        return self

    def _bind(self, bindings: list[tuple[Placeholder, object]], expected: Output) -> None:
        """Bind the placeholders an expected output matched; two placeholders of one
        playbook never share a value (they stand for different connections)."""
        for holder, value in bindings:
            for other in self._placeholders:
                if other is not holder and other.bound and other.value == value:
                    self._fail(
                        f"{_short(expected)} would bind placeholder {holder.name!r} to "
                        f"{value!r}, which placeholder {other.name!r} already holds"
                    )
            holder.bind(value)
            self._placeholders.append(holder)

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

    def _fail(self, message: str) -> NoReturn:
        lines = [*self.trace, f"!! {message}"]
        if self.pending:
            lines.append("   still pending: " + ", ".join(_short(p) for p in self.pending))
        raise PlaybookError("playbook mismatch:\n  " + "\n  ".join(lines))


def _match(expected: Output, actual: Output) -> list[tuple[Placeholder, object]] | None:
    """The placeholders ``expected`` binds if it matches ``actual`` (of the same type),
    or None if it does not. An expected ``Write``'s bytes may begin the actual ones."""
    bindings: list[tuple[Placeholder, object]] = []
    for name in expected.__dataclass_fields__:
        want, have = getattr(expected, name), getattr(actual, name)
        if isinstance(want, Placeholder):
            if want.bound:
                if want.value != have:
                    return None
            else:
                earlier = [value for holder, value in bindings if holder is want]
                if earlier and earlier[0] != have:
                    return None
                bindings.append((want, have))
        elif isinstance(expected, Write) and name == "data" and isinstance(want, bytes):
            begins = isinstance(have, bytes) and bool(want) and have.startswith(want)
            if want != have and not begins:
                return None
        elif want != have:
            return None
    return bindings


def _rest_of_write(expected: Write, actual: Write) -> Write | None:
    """What is left of ``actual`` after the bytes ``expected`` named (None if nothing)."""
    if not isinstance(expected.data, bytes) or len(expected.data) >= len(actual.data):
        return None
    return Write(actual.conn, actual.data[len(expected.data) :])

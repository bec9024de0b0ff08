"""The dispatcher every adapter runs its core under (docs/architecture.md, "Adapters"):
events in one at a time, instructions out in order, observer events to ``Observers``, and
the single timer re-armed when ``next_deadline()`` changes. Plus the write-buffer bookkeeping
(``OutBuffer``) and the sizes the adapters share."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from metaprotocol.adapters.observers import Observers
from metaprotocol.core.config import Config
from metaprotocol.core.events import Event, TimePassed
from metaprotocol.core.outputs import INSTRUCTION_TYPES, Instruction, Output, Write
from metaprotocol.core.stats import EndpointStatus, Stats

__all__ = [
    "CLOSE_LINGER",
    "HIGH_WATERMARK",
    "LOW_WATERMARK",
    "READ_CHUNK",
    "Core",
    "Dispatcher",
    "OutBuffer",
]

log = logging.getLogger("metaprotocol")

HIGH_WATERMARK = 256 * 1024
LOW_WATERMARK = 64 * 1024
READ_CHUNK = 64 * 1024
CLOSE_LINGER = 30.0  # seconds a flushing close may wait for a peer that does not read


def _described(item: object) -> str:
    """An event or instruction for a log line: its kind and connection, never its data."""
    conn = getattr(item, "conn", None)
    kind = type(item).__name__
    return kind if conn is None else f"{kind} (connection {conn})"


class Core(Protocol):
    """The slice of ``metaprotocol.core.proxy.Proxy`` the adapters use."""

    @property
    def stats(self) -> Stats: ...

    @property
    def drained(self) -> bool: ...

    def handle(self, event: Event, now: float) -> list[Output]: ...

    def next_deadline(self) -> float | None: ...

    def drain(self, now: float) -> list[Output]: ...

    def reload(self, config: Config, now: float) -> list[Output]: ...

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]: ...


class Driven(Protocol):
    """What a dispatcher drives: a core (the proxy's, or the admin endpoint's
    ``AdminCore``)."""

    def handle(self, event: Event, now: float) -> list[Output]: ...

    def next_deadline(self) -> float | None: ...


class _Batch:
    __slots__ = ("outputs",)

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = outputs


class Dispatcher:
    """Feeds events to a core one at a time and routes its outputs.

    Instructions go to the adapter's ``execute`` (``Write`` to ``write`` when the adapter
    gives that fast path), observer events to ``observers``. An event fed while outputs are
    being executed (a socket callback fired synchronously by a write, say) is queued and
    handled after them, so instructions always run in the order the core gave them. After
    each burst the single timer is re-armed through ``arm_timer`` only when
    ``next_deadline()`` changed, and ``after_burst`` (if set) is called.
    """

    def __init__(
        self,
        core: Driven,
        *,
        clock: Callable[[], float],
        execute: Callable[[Instruction], None],
        arm_timer: Callable[[float | None], None],
        observers: Observers | None = None,
        write: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.core = core
        self.observers = observers if observers is not None else Observers()
        self.crashes: list[BaseException] = []
        self.after_burst: Callable[[], None] | None = None
        self._write = write
        self._clock = clock
        self._execute = execute
        self._arm_timer = arm_timer
        self._queue: deque[Event | _Batch] = deque()
        self._busy = False
        self._armed: float | None = None
        self._last_now = float("-inf")

    def now(self) -> float:
        """The adapter's clock, never going backwards."""
        now = self._clock()
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def feed(self, event: Event) -> None:
        self._queue.append(event)
        if not self._busy:
            self._run()

    def apply(self, outputs: list[Output]) -> None:
        """Execute outputs the core returned outside ``handle`` (drain, reload)."""
        self._queue.append(_Batch(outputs))
        if not self._busy:
            self._run()

    def timer_fired(self, deadline: float) -> None:
        # A timer may fire a clock tick early; the core must see the deadline as reached.
        if self._last_now < deadline:
            self._last_now = deadline
        self._armed = None
        self.feed(TimePassed())

    def _run(self) -> None:
        self._busy = True
        queue, core, execute, write = self._queue, self.core, self._execute, self._write
        observe = self.observers
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, _Batch):
                    outputs = item.outputs
                else:
                    try:
                        outputs = core.handle(item, self.now())
                    except Exception as exc:  # a core bug must not take every connection down
                        # Never the event itself: it may hold a request (and its credentials).
                        log.exception("core.handle raised on %s", _described(item))
                        self.crashes.append(exc)
                        continue
                for out in outputs:
                    if write is not None and type(out) is Write:
                        try:
                            write(out.conn, out.data)
                        except Exception as exc:
                            log.exception("executing %s raised", _described(out))
                            self.crashes.append(exc)
                    elif isinstance(out, INSTRUCTION_TYPES):
                        try:
                            execute(out)
                        except Exception as exc:
                            log.exception("executing %s raised", _described(out))
                            self.crashes.append(exc)
                    else:
                        observe(out)
        finally:
            self._busy = False
        if observe.access_log is not None:
            observe.access_log.flush()
        deadline = core.next_deadline()
        if deadline != self._armed:
            self._armed = deadline
            self._arm_timer(deadline)
        if self.after_burst is not None:
            self.after_burst()


class OutBuffer:
    """A connection's pending output with high/low watermark crossings reported."""

    __slots__ = ("above", "data", "high", "low")

    def __init__(self, high: int = HIGH_WATERMARK, low: int = LOW_WATERMARK) -> None:
        self.data = bytearray()
        self.high, self.low = high, low
        self.above = False

    def append(self, data: bytes) -> bool:
        """Queue ``data``; True when the buffer just rose above the high watermark."""
        self.data += data
        if not self.above and len(self.data) > self.high:
            self.above = True
            return True
        return False

    def consumed(self, n: int) -> bool:
        """Drop ``n`` sent bytes; True when the buffer just fell to the low watermark."""
        del self.data[:n]
        if self.above and len(self.data) <= self.low:
            self.above = False
            return True
        return False

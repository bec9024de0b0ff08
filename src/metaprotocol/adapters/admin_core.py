"""The admin HTTP endpoint as a core of its own (docs/architecture.md, "Adapters"): it
takes the same events and gives the same instructions as the proxy's core, so an adapter
serves it with the connection code it uses for its listeners, under a second
``Dispatcher``. It does no IO and reads no clock.

Its bounds (docs/configuration.md, "admin"; see metaprotocol.admin):
- connections beyond ``admin.max_connections`` are closed as soon as they are accepted;
- a connection is answered while its unwritten answers stay under the adapter's write
  buffer high watermark: above it (``WriteBufferHigh``) the connection is no longer read
  nor answered until it drains (``WriteBufferLow``). Pipelined requests are answered at
  most ``ANSWER_BURST`` bytes at a time, the rest on the next timer tick, with reading off
  meanwhile, so a client pipelining without reading holds at most about the watermark plus
  one burst and one answer;
- a connection making no progress (no bytes received, no answer drained) for
  ``admin.idle_timeout`` is closed.
"""

from __future__ import annotations

from metaprotocol.admin import AdminApp, AdminConnection, AdmissionGate
from metaprotocol.core.config import AdminConfig
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    Event,
    TimePassed,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import CloseConnection, Output, ReadDisable, ReadEnable, Write

__all__ = ["ANSWER_BURST", "AdminCore"]

ANSWER_BURST = 64 * 1024
"""Bytes of answers to pipelined requests one event may produce on one connection."""


class _AdminConn:
    __slots__ = ("backlog", "http", "idle_at", "paused")

    def __init__(self, http: AdminConnection, idle_at: float) -> None:
        self.http = http
        self.idle_at = idle_at
        self.paused = False  # above the write buffer's high watermark
        self.backlog = False  # pipelined requests left for the next tick (reading off)


class AdminCore:
    """Serves ``app`` on every connection accepted on the admin listener."""

    def __init__(self, app: AdminApp, config: AdminConfig) -> None:
        self.app = app
        self.config = config
        self.gate = AdmissionGate(config.max_connections)
        self.conns: dict[int, _AdminConn] = {}
        self._tick: float | None = None  # when backlogs are answered next

    def next_deadline(self) -> float | None:
        idle = min((c.idle_at for c in self.conns.values()), default=None)
        if self._tick is None or (idle is not None and idle < self._tick):
            return idle
        return self._tick

    def handle(self, event: Event, now: float) -> list[Output]:
        match event:
            case Accepted(conn):
                if not self.gate.admit():
                    return [CloseConnection(conn, flush=False)]
                self.conns[conn] = _AdminConn(AdminConnection(self.app), self._idle(now))
            case DataReceived(conn, data):
                return self._received(conn, data, now)
            case EofReceived(conn):
                return self._received(conn, b"", now)
            case WriteBufferHigh(conn):
                if (c := self.conns.get(conn)) is not None and not c.paused:
                    c.paused = True
                    return [] if c.backlog else [ReadDisable(conn)]
            case WriteBufferLow(conn):
                if (c := self.conns.get(conn)) is not None and c.paused:
                    c.paused = False
                    c.idle_at = self._idle(now)
                    return self._answer(conn, c, now, [], reading_off=True)
            case Closed(conn):
                self._forget(conn)
            case TimePassed():
                return self._timers(now)
        return []

    def _idle(self, now: float) -> float:
        return now + self.config.idle_timeout

    def _received(self, conn: int, data: bytes, now: float) -> list[Output]:
        if (c := self.conns.get(conn)) is None:
            return []
        c.idle_at = self._idle(now)
        if not c.http.take(data):
            return self._close(conn, [], flush=True)
        if c.paused or c.backlog:  # answered once drained, or on the next tick
            return []
        return self._answer(conn, c, now, [], reading_off=False)

    def _answer(
        self, conn: int, c: _AdminConn, now: float, out: list[Output], *, reading_off: bool
    ) -> list[Output]:
        """Answer what ``c`` has received, up to a burst; leave the rest for the next tick
        (reading off meanwhile). ``reading_off``: whether ``c`` is not being read now."""
        was_off = reading_off or c.backlog
        sent = 0
        while True:
            answer, close = c.http.answer_next()
            if answer:
                out.append(Write(conn, answer))
                sent += len(answer)
            if close:
                return self._close(conn, out, flush=True)
            if not answer:
                c.backlog = False
                if was_off:
                    out.append(ReadEnable(conn))
                return out
            if sent >= ANSWER_BURST:
                c.backlog = True
                self._tick = now if self._tick is None else min(self._tick, now)
                if not was_off:
                    out.append(ReadDisable(conn))
                return out

    def _timers(self, now: float) -> list[Output]:
        out: list[Output] = []
        for conn, c in list(self.conns.items()):
            if c.idle_at <= now:
                self._close(conn, out, flush=False)
        if self._tick is not None and self._tick <= now:
            self._tick = None
            for conn, c in list(self.conns.items()):
                if c.backlog and not c.paused:
                    self._answer(conn, c, now, out, reading_off=True)
        return out

    def _close(self, conn: int, out: list[Output], *, flush: bool) -> list[Output]:
        self._forget(conn)
        out.append(CloseConnection(conn, flush=flush))
        return out

    def _forget(self, conn: int) -> None:
        if self.conns.pop(conn, None) is not None:
            self.gate.release()

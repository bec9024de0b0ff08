"""A tiny fake core for adapter tests: echo, sink and forward listeners, plus test commands.

Listener ``echo`` writes back what it receives, except whole chunks that are commands:
``close`` (reply ``bye``, flushing close), ``abort`` (close without flush), ``flood:N``
(write N bytes in 1 MiB pieces), ``timer:S`` (reply ``fired`` once S seconds passed). On
end of stream it writes ``<eof>`` and closes. Listener ``sink`` only counts bytes. Listener
``fwd`` opens an upstream to ``config.raw["upstream"]`` and pipes both ways.
"""

from __future__ import annotations

from metaprotocol.core.config import Config
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    Event,
    TimePassed,
    UpstreamConnected,
    UpstreamConnectFailed,
)
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Output, Write
from metaprotocol.core.stats import EndpointStatus, Stats

__all__ = ["FakeCore"]


class FakeCore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self.events: list[tuple[float, Event]] = []
        self.listener_of: dict[int, str] = {}
        self.received: dict[int, int] = {}
        self.peer: dict[int, int] = {}
        self.connected: set[int] = set()
        self.held: dict[int, list[bytes]] = {}
        self.timers: list[tuple[float, int]] = []
        self.fired: list[tuple[float, float]] = []  # (now, deadline)
        self.draining = False
        self._next_up = -1

    @property
    def drained(self) -> bool:
        return self.draining and not self.listener_of

    def next_deadline(self) -> float | None:
        return min((t for t, _ in self.timers), default=None)

    def drain(self, now: float) -> list[Output]:
        self.draining = True
        out: list[Output] = []
        for conn in list(self.listener_of):
            out.extend(self._close(conn, flush=True))
        return out

    def reload(self, config: Config, now: float) -> list[Output]:
        self.config = config
        return []

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        return []

    def _close(self, conn: int, flush: bool = True) -> list[Output]:
        self.listener_of.pop(conn, None)
        return [CloseConnection(conn, flush)]

    def handle(self, event: Event, now: float) -> list[Output]:
        self.events.append((now, event))
        out: list[Output] = []
        match event:
            case Accepted(conn, listener):
                self.listener_of[conn] = listener
                self.stats.inc("cx", (("listener", listener),))
                if listener == "fwd":
                    up = self._next_up
                    self._next_up -= 1
                    host, _, port = str(self.config.raw["upstream"]).rpartition(":")
                    self.listener_of[up] = "upstream"
                    self.peer[conn], self.peer[up] = up, conn
                    self.held[up] = []
                    out.append(OpenUpstream(up, host, int(port)))
            case DataReceived(conn, data):
                self.received[conn] = self.received.get(conn, 0) + len(data)
                out.extend(self._data(conn, data, now))
            case UpstreamConnected(conn):
                self.connected.add(conn)
                out.extend(Write(conn, d) for d in self.held.pop(conn, []))
            case UpstreamConnectFailed(conn, _):
                self.listener_of.pop(conn, None)
                down = self.peer.pop(conn)
                out.append(Write(down, b"connect failed"))
                out.extend(self._close(down))
            case EofReceived(conn):
                other = self.peer.get(conn)
                if other is not None:
                    out.extend(self._close(other))
                    out.extend(self._close(conn))
                elif self.listener_of.get(conn) == "echo":
                    out.append(Write(conn, b"<eof>"))
                    out.extend(self._close(conn))
            case Closed(conn):
                self.listener_of.pop(conn, None)
                other = self.peer.pop(conn, None)
                if other is not None and other in self.listener_of:
                    out.extend(self._close(other))
            case TimePassed():
                due = [(t, c) for t, c in self.timers if t <= now]
                self.timers = [(t, c) for t, c in self.timers if t > now]
                for deadline, conn in due:
                    self.fired.append((now, deadline))
                    out.append(Write(conn, b"fired"))
            case _:
                pass
        return out

    def _data(self, conn: int, data: bytes, now: float) -> list[Output]:
        listener = self.listener_of.get(conn)
        if listener is None:
            return []
        other = self.peer.get(conn)
        if other is not None:
            if other < 0 and other not in self.connected:
                self.held[other].append(data)
                return []
            return [Write(other, data)]
        if listener != "echo":
            return []
        if data == b"close":
            return [Write(conn, b"bye"), *self._close(conn)]
        if data == b"abort":
            return self._close(conn, flush=False)
        if data.startswith(b"flood:"):
            n = int(data[6:])
            piece = b"x" * (1 << 20)
            return [Write(conn, piece[: min(len(piece), n - i)]) for i in range(0, n, len(piece))]
        if data.startswith(b"timer:"):
            self.timers.append((now + float(data[6:]), conn))
            return []
        self.stats.histogram("echo_bytes", (("listener", listener),)).observe(float(len(data)))
        return [Write(conn, data)]

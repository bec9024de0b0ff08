"""What the three IO adapters share: the core interface, event queueing, observer routing,
the single-timer decision, write-buffer watermarks, and building a core from a config."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from metaprotocol.accesslog import AccessLog
from metaprotocol.admin import AdminApp
from metaprotocol.core.config import Config, RateLimitRedisConfig
from metaprotocol.core.events import Event, ExternalCallCompleted, TimePassed
from metaprotocol.core.outputs import (
    INSTRUCTION_TYPES,
    FilterFailed,
    Instruction,
    Output,
    RequestCompleted,
    Write,
)
from metaprotocol.core.stats import EndpointStatus, Stats
from metaprotocol.logs import OperationsLog
from metaprotocol.metrics import with_endpoints
from metaprotocol.tracing import SpanExporter

__all__ = [
    "CLOSE_LINGER",
    "HIGH_WATERMARK",
    "LOW_WATERMARK",
    "READ_CHUNK",
    "Core",
    "Dispatcher",
    "ListenerChanges",
    "OutBuffer",
    "ServerInfo",
    "bind_and_reload",
    "bind_listener_changes",
    "bind_socket",
    "bound_address",
    "build_core",
    "global_ratelimit_redis",
    "log_event",
    "resolve_config",
]

log = logging.getLogger("metaprotocol")

HIGH_WATERMARK = 256 * 1024
LOW_WATERMARK = 64 * 1024
READ_CHUNK = 64 * 1024
CLOSE_LINGER = 30.0  # seconds a flushing close may wait for a peer that does not read

_LOGGED = (FilterFailed,)


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


def resolve_config(config: Config | str | os.PathLike[str]) -> Config:
    """A ``Config`` as is, or one loaded from a YAML/JSON file path."""
    if isinstance(config, Config):
        return config
    from metaprotocol.configfile import load_config

    loaded: Config = load_config(os.fspath(config))
    return loaded


def build_core(config: Config, now: float) -> Core:
    from metaprotocol.core.proxy import Proxy

    # The core takes randomness as an argument (weighted clusters, mirror fractions, faults).
    # Observer events cost about a fifth of the per-request CPU: only the access log and
    # tracing need them here (an embedding program that watches events passes its own Proxy).
    observe = config.access_log is not None or config.tracing is not None
    proxy: Core = Proxy(config, now=now, random=random.Random().random, observe=observe)
    return proxy


def global_ratelimit_redis(config: Config | None) -> RateLimitRedisConfig | None:
    """Where the global rate limiter's Redis lives and how to log in (``global_ratelimit_redis``),
    if set."""
    return None if config is None else config.global_ratelimit_redis


def log_event(event: Output) -> None:
    """Log what the core reports for the log (the adapters' job: the core does no IO): a
    filter that raised. Requests are never logged. (Upstream connect failures and ejections
    go to the rate-limited ``OperationsLog``, one of the dispatcher's observers.)"""
    if isinstance(event, FilterFailed):
        log.error(
            "filter %s raised on listener %s (route %s); the request got an internal error",
            event.filter,
            event.listener,
            event.route or "-",
            exc_info=event.exception,
        )


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (its first address)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class ListenerChanges:
    """What a reload does to the listening sockets: ``removed`` names stop accepting (an
    address change is a removal and an addition); ``added`` are bound, all or none."""

    removed: tuple[str, ...]
    added: dict[str, socket.socket]

    def close(self) -> None:
        for sock in self.added.values():
            sock.close()

    def update(self, addresses: dict[str, tuple[str, int]]) -> None:
        """Bring a handle's listener name -> bound address map up to date."""
        for name in self.removed:
            addresses.pop(name, None)
        for name, sock in self.added.items():
            addresses[name] = bound_address(sock.getsockname())


def bind_listener_changes(old: Config | None, new: Config, reuse_port: bool) -> ListenerChanges:
    """Bind the listeners ``new`` adds (or moves) over ``old``. Raises OSError (naming the
    listener) or ValueError, with nothing left bound, if any of them cannot be bound or one
    would turn TLS on or off at its address."""
    before = {} if old is None else {lst.name: (lst.host, lst.port) for lst in old.listeners}
    after = {lst.name: (lst.host, lst.port) for lst in new.listeners}
    removed = tuple(name for name, address in before.items() if after.get(name) != address)
    if old is not None:  # a listening socket is plaintext or TLS for its whole life
        secure = {lst.name: lst.tls is not None for lst in old.listeners}
        for lst in new.listeners:
            if before.get(lst.name) == after[lst.name] and secure[lst.name] != (
                lst.tls is not None
            ):
                raise ValueError(
                    f"listener {lst.name!r}: turning TLS on or off takes a new address "
                    "(or a restart)"
                )
    added: dict[str, socket.socket] = {}
    try:
        for name, (host, port) in after.items():
            if before.get(name) == (host, port):
                continue
            if reuse_port and port == 0:
                raise ValueError(f"listener {name!r}: --workers needs fixed ports, not port 0")
            try:
                added[name] = bind_socket(host, port, reuse_port)
            except OSError as exc:
                raise OSError(f"listener {name!r} on {host}:{port}: {exc}") from exc
    except BaseException:
        ListenerChanges((), added).close()
        raise
    return ListenerChanges(removed, added)


def bind_and_reload(dispatcher: Dispatcher, new: Config, reuse_port: bool) -> ListenerChanges:
    """Bind the listeners ``new`` adds or moves over the dispatcher's config, then reload
    the core: what an adapter's ``Handle.reload`` does before it swaps the listening
    sockets. Raises, with nothing changed, if a listener cannot be bound or the core
    refuses ``new``."""
    if dispatcher.draining:
        raise RuntimeError("reload while draining or closed")
    changes = bind_listener_changes(dispatcher.config, new, reuse_port)
    try:
        dispatcher.reload(new)
    except BaseException:
        changes.close()
        raise
    return changes


def bound_address(sockname: Any) -> tuple[str, int]:
    """``(host, port)`` from a socket name (IPv6 names carry two more fields)."""
    return str(sockname[0]), int(sockname[1])


class _Batch:
    __slots__ = ("outputs",)

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = outputs


class Dispatcher:
    """Feeds events to the core one at a time and routes its outputs.

    Instructions go to the adapter's ``execute``; ``RequestCompleted`` goes to the access log
    and, when ``config.tracing`` is set, to the span exporter (``tracer``, made here: the
    ``tracing`` section is read once, at start); every observer event goes to
    ``observers``. An event fed while outputs are being executed (a socket callback fired
    synchronously by a write, say) is queued and handled after them, so instructions always
    run in the order the core gave them. After each burst the single
    timer is re-armed through ``arm_timer`` only when ``next_deadline()`` changed.
    """

    def __init__(
        self,
        core: Core,
        *,
        clock: Callable[[], float],
        execute: Callable[[Instruction], None],
        arm_timer: Callable[[float | None], None],
        access_log: AccessLog | None = None,
        config: Config | None = None,
        write: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.core = core
        # Optional fast path for the commonest instruction (``Write``), skipping the
        # general ``execute`` dispatch; adapters without one get every instruction there.
        self._write = write
        self.config = config
        self.access_log = access_log
        tracing = None if config is None else config.tracing
        self.tracer = None if tracing is None else SpanExporter(tracing)
        # The operator log of connect failures and ejections (rate limited) comes first.
        self.observers: list[Callable[[Output], None]] = [OperationsLog().observe]
        self.crashes: list[BaseException] = []
        self.draining = False
        self.on_drained: Callable[[], None] | None = None
        self._clock = clock
        self._execute = execute
        self._arm_timer = arm_timer
        self._queue: deque[Event | _Batch] = deque()
        self._busy = False
        self._armed: float | None = None
        self._last_now = float("-inf")
        self._drained_reported = False

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

    def complete_call(self, call: int, result: Any = None, error: str = "") -> None:
        if error:
            self.core.stats.inc("global_ratelimit_redis_errors")
        self.feed(ExternalCallCompleted(call, result, error))

    def start_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.apply(self.core.drain(self.now()))

    def reload(self, config: Config) -> None:
        started = None if self.config is None else self.config.tracing
        if config.tracing != started:
            log.warning("tracing settings change only on restart; keeping those of the start")
            config = replace(config, tracing=started)
        outputs = self.core.reload(config, self.now())
        self.config = config
        self.apply(outputs)

    @property
    def drained(self) -> bool:
        return self.draining and self.core.drained

    def _run(self) -> None:
        self._busy = True
        queue, core, execute, write = self._queue, self.core, self._execute, self._write
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
                        if isinstance(out, RequestCompleted):
                            self._completed(out)
                        elif isinstance(out, _LOGGED):
                            log_event(out)
                        for observer in self.observers:
                            observer(out)
        finally:
            self._busy = False
        if self.access_log is not None:
            self.access_log.flush()
        deadline = core.next_deadline()
        if deadline != self._armed:
            self._armed = deadline
            self._arm_timer(deadline)
        if self.draining and not self._drained_reported and core.drained:
            self._drained_reported = True
            if self.on_drained is not None:
                self.on_drained()

    def _completed(self, event: RequestCompleted) -> None:
        wall = time.time()
        if self.access_log is not None:
            self.access_log.log(event, wall)
        if self.tracer is not None and event.span is not None:
            self.tracer.record(event, wall)

    def reopen_access_log(self) -> None:
        """Reopen the access log file (after a rotation); a failure is logged and the old
        file kept."""
        if self.access_log is None:
            return
        try:
            self.access_log.reopen()
        except OSError as exc:
            log.error("cannot reopen the access log %s: %s", self.access_log.path, exc)
            return
        log.info("access log %s reopened", self.access_log.path)

    def close_logs(self) -> None:
        """Write out and close the access log; export the spans still queued."""
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()

    def admin_app(self) -> AdminApp:
        empty: Mapping[str, Any] = {}
        return AdminApp(
            ready=lambda: not self.draining,
            snapshot=lambda: with_endpoints(self.core.stats.snapshot(), self.endpoints()),
            config_raw=lambda: empty if self.config is None else self.config.raw,
            endpoints=self.endpoints,
        )

    def endpoints(self) -> list[EndpointStatus]:
        return self.core.endpoint_statuses(self.now())


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


@dataclass
class ServerInfo:
    """Where a running proxy listens: listener name -> bound (host, port), and the admin."""

    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    admin_address: tuple[str, int] | None = None

    @property
    def ports(self) -> dict[str, int]:
        return {name: port for name, (_, port) in self.addresses.items()}

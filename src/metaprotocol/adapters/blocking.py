"""Blocking adapter: one thread, non-blocking sockets under ``selectors``, no asyncio.

Embedding (in a plain thread)::

    def ready(handle): print(handle.ports)
    threading.Thread(target=serve_forever, args=(config,), kwargs={"ready": ready}).start()
    ...
    handle.stop(drain_timeout=10)   # thread-safe; serve_forever returns when done

Each connection has an ``OutBuffer`` whose watermarks (256KiB / 64KiB) become
``WriteBufferHigh`` / ``WriteBufferLow`` (and its size after each write above the high one,
``WriteBufferGrew``); output is sent once per loop iteration. A read-
disabled connection is simply not polled for reading. ``time.monotonic()`` is the core's
clock and the selector's timeout comes from ``next_deadline()``. Global rate-limit calls to
Redis run one at a time on a helper thread (bounded by a short socket timeout), so a slow
Redis delays only the requests waiting for their verdict; the result comes back through
the loop's wakeup socket. Everything else runs on the loop's own thread.

TLS (metaprotocol.tls) wraps the non-blocking sockets in ``ssl``: a handshake advances on
each readiness its ``SSLWantReadError``/``SSLWantWriteError`` asked for; a TLS listener's
client reaches the core only once its handshake succeeded (a failure is counted, a client
that does not finish in time is closed), and an upstream reports ``UpstreamConnected``
after its handshake. Reads also take what ``ssl`` already decrypted (``pending()``), which
the selector cannot see.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, assert_never

from metaprotocol.adapters.binding import bind_socket, bound_address
from metaprotocol.adapters.dispatcher import CLOSE_LINGER, READ_CHUNK, Core, Dispatcher, OutBuffer
from metaprotocol.adapters.jobs import WorkerThread
from metaprotocol.adapters.serving import Reload, ServerInfo, Serving, prepare_reload
from metaprotocol.core import events as ev
from metaprotocol.core.config import ClusterTls, Config
from metaprotocol.core.outputs import (
    CloseConnection,
    ExternalCall,
    Instruction,
    OpenUpstream,
    ReadDisable,
    ReadEnable,
    Write,
)
from metaprotocol.ratelimit_redis import BlockingRedisRateLimiter
from metaprotocol.tls import HANDSHAKE_TIMEOUT, TlsError, count_handshake_error, server_hostname

__all__ = ["Handle", "serve_forever"]

T = TypeVar("T")
log = logging.getLogger("metaprotocol")
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Connection:
    def __init__(self, conn: int, sock: socket.socket, dispatcher: Dispatcher) -> None:
        self.conn = conn
        self.sock = sock
        self.dispatcher = dispatcher  # the proxy's, or the admin endpoint's
        self.out = OutBuffer()
        self.readable = True
        self.eof = False
        self.connecting = False
        self.closing_until: float | None = None  # flushing close: give up after this
        self.mask = 0
        self.secure = False  # an ssl.SSLSocket
        # A TLS handshake in progress: what it waits for (_R or _W); a client's listener
        # name (None: an upstream), its peer, and when a client is given up on.
        self.handshake = 0
        self.listener: str | None = None
        self.peer = ""
        self.handshake_until = 0.0


class _Listener:
    def __init__(self, sock: socket.socket, name: str | None) -> None:
        self.sock, self.name = sock, name  # name None: the admin listener


class _Timer:
    def __init__(self, fire: Callable[[float], None]) -> None:
        self.fire = fire
        self.deadline: float | None = None

    def arm(self, deadline: float | None) -> None:
        self.deadline = deadline


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Handle(ServerInfo):
    """A proxy running in ``serve_forever``; every method is safe to call from any thread."""

    def __init__(self, loop: _Loop) -> None:
        super().__init__()
        self._loop = loop
        self.serving = loop.serving
        self._config = loop.serving.config  # as of the last reload: the next one's base

    @property
    def proxy(self) -> Core:
        return self.serving.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self.serving.dispatcher

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` in the proxy's thread; its result or exception lands in the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain). Binding happens
        here, first: if a listener cannot be bound this raises and nothing changes."""
        prepared = prepare_reload(self._config, config, self.serving.reuse_port)
        self._config = config
        prepared.changes.update(self.addresses)
        self._loop.call_soon_threadsafe(lambda: self._loop.reload(prepared))

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop: with a drain timeout, stop accepting and let in-flight requests finish first."""
        self._loop.call_soon_threadsafe(lambda: self._loop.begin_stop(drain_timeout))


class _Loop:
    def __init__(self, config: Any, proxy: Core | None, **options: Any) -> None:
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Connection] = {}
        self.closing: set[_Connection] = set()
        self.handshakes: set[_Connection] = set()  # TLS clients not yet handshaken
        self.upstream_tls: dict[_Connection, tuple[ssl.SSLContext, str]] = {}  # connecting
        self.dirty: set[_Connection] = set()
        self.listeners: list[_Listener] = []
        self.next_id = 1
        self.timers: list[_Timer] = []
        self.stop_at: float | None = None
        self.stopped = False
        self.calls: deque[Callable[[], None]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, _R, None)
        self.serving = serving = Serving.start(
            config, proxy, clock=time.monotonic, execute=self.execute, timer=self.timer, **options
        )
        self.dispatcher = serving.dispatcher
        self.limiter: BlockingRedisRateLimiter | None = None
        # One thread: the limiter has one Redis connection, and calls keep their order.
        self.worker = WorkerThread(self.call_soon_threadsafe, "metaprotocol-ratelimit")
        if (redis := serving.config.global_ratelimit_redis) is not None:
            self.limiter = limiter = BlockingRedisRateLimiter.from_config(redis)
            serving.calls.register(
                "global_ratelimit",
                lambda call, payload: self.worker.submit(
                    partial(limiter.check, payload),
                    lambda result, error: serving.calls.complete(call, result, error),
                ),
            )

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)
        with contextlib.suppress(OSError):  # full (a wakeup is pending) or already closed
            self.wake_w.send(b"\0")

    def timer(self, fire: Callable[[float], None]) -> _Timer:
        self.timers.append(timer := _Timer(fire))
        return timer

    # -- instructions ---------------------------------------------------------------------

    def execute(self, instruction: Instruction) -> None:
        match instruction:
            case Write(conn, data):
                c = self.conns.get(conn)
                if c is not None:
                    if c.out.append(data):
                        c.dispatcher.feed(ev.WriteBufferHigh(conn))
                    if c.out.above:
                        c.dispatcher.feed(ev.WriteBufferGrew(conn, len(c.out.data)))
                    self.dirty.add(c)
            case ReadDisable(conn):
                if (c := self.conns.get(conn)) is not None:
                    c.readable = False
                    self.update(c)
            case ReadEnable(conn):
                if (c := self.conns.get(conn)) is not None:
                    c.readable = True
                    self.update(c)
            case OpenUpstream(conn, host, port, tls):
                self.connect(conn, host, port, tls)
            case CloseConnection(conn, flush):
                if (c := self.conns.pop(conn, None)) is not None:
                    if flush and c.out.data and not c.connecting:
                        c.closing_until = time.monotonic() + CLOSE_LINGER
                        c.readable = False
                        self.closing.add(c)
                        self.dirty.add(c)
                    else:
                        self.drop(c)
            case ExternalCall():
                self.serving.calls.start(instruction)
            case _:
                assert_never(instruction)

    def connect(self, conn: int, host: str, port: int, tls: ClusterTls | None) -> None:
        try:
            ctx = None if tls is None else self.serving.tls.upstream(tls)
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
                0
            ]
            sock = socket.socket(family, kind, proto)
        except (OSError, TlsError) as exc:
            self.dispatcher.feed(ev.UpstreamConnectFailed(conn, str(exc)))
            return
        sock.setblocking(False)
        _nodelay(sock)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self.dispatcher.feed(ev.UpstreamConnectFailed(conn, os.strerror(err)))
            return
        c = self.conns[conn] = _Connection(conn, sock, self.dispatcher)
        c.connecting = True
        if ctx is not None and tls is not None:
            self.upstream_tls[c] = (ctx, server_hostname(tls, host))
        self.update(c)

    # -- TLS handshakes -------------------------------------------------------------------

    def start_handshake(self, c: _Connection, ctx: ssl.SSLContext, hostname: str | None) -> None:
        """Wrap ``c``'s socket in TLS (a client's: server side) and start its handshake."""
        if c.mask:  # the wrapped socket takes over the file descriptor
            self.sel.unregister(c.sock)
            c.mask = 0
        try:
            c.sock = ctx.wrap_socket(
                c.sock,
                server_side=c.listener is not None,
                server_hostname=hostname,
                do_handshake_on_connect=False,
            )
        except (OSError, ValueError) as exc:
            self.handshake_failed(c, exc)
            return
        c.secure = True
        c.handshake = _R
        self.step_handshake(c)

    def step_handshake(self, c: _Connection) -> None:
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            c.handshake = _R
        except ssl.SSLWantWriteError:
            c.handshake = _W
        except (OSError, ValueError) as exc:  # ssl.SSLError, a reset, a bad certificate
            self.handshake_failed(c, exc)
            return
        else:
            c.handshake = 0
            self.handshakes.discard(c)
            if c.listener is None:
                self.update(c)
                self.dispatcher.feed(ev.UpstreamConnected(c.conn))
            elif self.serving.draining:
                del self.conns[c.conn]
                self.drop(c)
            else:
                self.update(c)
                self.dispatcher.feed(ev.Accepted(c.conn, c.listener, c.peer))
            return
        self.update(c)

    def handshake_failed(self, c: _Connection, reason: object) -> None:
        """A client's failed handshake is counted; an upstream's is a connect failure."""
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
        self.drop(c)
        if c.listener is not None:
            count_handshake_error(self.serving.core.stats, c.listener, reason)
        else:
            self.dispatcher.feed(ev.UpstreamConnectFailed(c.conn, str(reason)))

    def update(self, c: _Connection) -> None:
        """Poll ``c`` for what it needs now."""
        if c.handshake:
            want = c.handshake
        elif c.connecting:
            want = _W
        else:
            want = (_R if c.readable and not c.eof else 0) | (_W if c.out.data else 0)
        if want == c.mask:
            return
        if c.mask == 0:
            self.sel.register(c.sock, want, c)
        elif want == 0:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, want, c)
        c.mask = want

    def drop(self, c: _Connection) -> None:
        if c.mask:
            self.sel.unregister(c.sock)
            c.mask = 0
        c.sock.close()
        self.closing.discard(c)
        self.dirty.discard(c)
        self.handshakes.discard(c)
        self.upstream_tls.pop(c, None)

    def lost(self, c: _Connection, error: str) -> None:
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
            self.drop(c)
            c.dispatcher.feed(ev.Closed(c.conn, error))
        else:
            self.drop(c)

    # -- socket readiness -----------------------------------------------------------------

    def on_ready(self, c: _Connection, mask: int) -> None:
        if c.handshake:
            self.step_handshake(c)
            return
        if c.connecting:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            c.connecting = False
            if err:
                del self.conns[c.conn]
                self.drop(c)
                self.dispatcher.feed(ev.UpstreamConnectFailed(c.conn, os.strerror(err)))
                return
            tls = self.upstream_tls.pop(c, None)
            if tls is not None:
                self.start_handshake(c, *tls)
                return
            self.update(c)
            self.dispatcher.feed(ev.UpstreamConnected(c.conn))
            return
        if mask & _W:
            self.dirty.add(c)
        if mask & _R and c.readable and not c.eof:
            try:
                data = c.sock.recv(READ_CHUNK)
                if c.secure:  # what ssl decrypted and buffered: no readiness will tell
                    while pending := c.sock.pending():  # type: ignore[attr-defined]
                        data += c.sock.recv(pending)
            except _TRY_AGAIN:
                return
            except OSError as exc:
                self.lost(c, str(exc))
                return
            if data:
                c.dispatcher.feed(ev.DataReceived(c.conn, data))
            else:
                c.eof = True
                self.update(c)
                c.dispatcher.feed(ev.EofReceived(c.conn))

    def flush(self) -> None:
        while self.dirty:
            c = self.dirty.pop()
            if c.out.data and not c.connecting:
                try:
                    sent = c.sock.send(c.out.data)
                except _TRY_AGAIN:  # ssl: retried with the same bytes first, as it requires
                    sent = 0
                except OSError as exc:
                    self.lost(c, str(exc))
                    continue
                if c.out.consumed(sent) and c.conn in self.conns:
                    c.dispatcher.feed(ev.WriteBufferLow(c.conn))
            if c in self.closing and not c.out.data:
                self.drop(c)
            elif c.conn in self.conns or c in self.closing:
                self.update(c)

    def accept(self, listener: _Listener) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: try again on the next readiness
            sock.setblocking(False)
            _nodelay(sock)
            admin = listener.name is None and self.serving.admin
            c = self.conns[self.next_id] = _Connection(self.next_id, sock, admin or self.dispatcher)
            self.next_id += 1
            ctx = None if listener.name is None else self.serving.tls.listener(listener.name)
            if ctx is None:
                self.update(c)
                name = listener.name or "admin"
                c.dispatcher.feed(ev.Accepted(c.conn, name, f"{peer[0]}:{peer[1]}"))
                continue
            c.listener, c.peer = listener.name, f"{peer[0]}:{peer[1]}"
            c.handshake_until = time.monotonic() + HANDSHAKE_TIMEOUT
            self.handshakes.add(c)
            self.start_handshake(c, ctx, None)

    # -- the loop -------------------------------------------------------------------------

    def reload(self, prepared: Reload) -> None:
        """The loop's half of ``Handle.reload``: swap the core's config, then the sockets."""
        changes = prepared.changes
        if self.stop_at is not None or self.stopped:  # draining: no new listeners
            changes.close()
            return
        try:
            self.serving.apply_reload(prepared)
        except Exception:
            log.exception("reload failed, keeping the running config")
            return
        for name in changes.removed:
            for listener in [lst for lst in self.listeners if lst.name == name]:
                self.sel.unregister(listener.sock)
                listener.sock.close()
                self.listeners.remove(listener)
        for name, sock in changes.added.items():
            listener = _Listener(sock, name)
            self.listeners.append(listener)
            self.sel.register(sock, _R, listener)

    def begin_stop(self, drain_timeout: float) -> None:
        for listener in self.listeners:
            if listener.name is not None:
                self.sel.unregister(listener.sock)
                listener.sock.close()
        self.listeners = [lst for lst in self.listeners if lst.name is None]
        if drain_timeout > 0 and not self.serving.draining:
            self.stop_at = time.monotonic() + drain_timeout
            self.serving.start_drain()
        else:
            self.stopped = True

    def run(self) -> None:
        while not self.stopped:
            now = time.monotonic()
            wakes = [t.deadline for t in self.timers if t.deadline is not None]
            wakes += [c.closing_until for c in self.closing if c.closing_until is not None]
            wakes += [c.handshake_until for c in self.handshakes]
            wake = min([*wakes, *([] if self.stop_at is None else [self.stop_at])], default=None)
            for key, mask in self.sel.select(None if wake is None else max(0.0, wake - now)):
                data = key.data
                if isinstance(data, _Connection):
                    self.on_ready(data, mask)
                elif isinstance(data, _Listener):
                    self.accept(data)
                else:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
            while self.calls:
                self.calls.popleft()()
            self.flush()
            now = time.monotonic()
            for timer in self.timers:
                if timer.deadline is not None and now >= timer.deadline:
                    timer.fire(timer.deadline)
                    self.flush()
            for c in [c for c in self.closing if (c.closing_until or now) <= now]:
                self.drop(c)
            for c in [c for c in self.handshakes if c.handshake_until <= now]:
                self.handshake_failed(c, "handshake timed out")
            if self.stop_at is not None and (self.serving.drained or now >= self.stop_at):
                self.stopped = True

    def shutdown(self) -> None:
        for c in [*self.conns.values(), *self.closing, *self.handshakes]:
            self.drop(c)
        self.conns.clear()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        # A call in flight ends within the limiter's timeout; its verdict is dropped.
        self.worker.close()
        self.wake_w.close()
        if self.limiter is not None:
            self.limiter.close()
        self.serving.close_logs()


def serve_forever(
    config: Config | str | os.PathLike[str],
    ready: Callable[[Handle], None] | None = None,
    *,
    proxy: Core | None = None,
    reuse_port: bool = False,
    admin: bool = True,
) -> None:
    """Serve ``config`` in this thread until ``handle.stop()``; ``ready`` gets the handle."""
    loop = _Loop(config, proxy, reuse_port=reuse_port, admin=admin)
    handle, serving = Handle(loop), loop.serving
    try:
        for spec in serving.config.listeners:
            sock = bind_socket(spec.host, spec.port, reuse_port)
            loop.listeners.append(_Listener(sock, spec.name))
            handle.addresses[spec.name] = bound_address(sock.getsockname())
        if serving.admin is not None and serving.config.admin is not None:
            sock = bind_socket(serving.config.admin.host, serving.config.admin.port, False)
            loop.listeners.append(_Listener(sock, None))
            handle.admin_address = bound_address(sock.getsockname())
        for listener in loop.listeners:
            loop.sel.register(listener.sock, _R, listener)
        serving.started()
        if ready is not None:
            ready(handle)
        loop.run()
    finally:
        loop.shutdown()

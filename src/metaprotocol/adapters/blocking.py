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
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, assert_never

from metaprotocol.adapters.binding import peer_text, take_backlog
from metaprotocol.adapters.blocking_connections import Connection, Connections
from metaprotocol.adapters.dispatcher import Core, Dispatcher
from metaprotocol.adapters.jobs import WorkerThread
from metaprotocol.adapters.serving import Reload, ServerInfo, Serving, prepare_reload
from metaprotocol.core import outputs as out
from metaprotocol.core.config import Config
from metaprotocol.ratelimit_redis import BlockingRedisRateLimiter

__all__ = ["Handle", "serve_forever"]

T = TypeVar("T")
log = logging.getLogger("metaprotocol")
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Listener:
    def __init__(self, sock: socket.socket, name: str | None) -> None:
        self.sock, self.name = sock, name  # name None: the admin listener


class _Timer:
    def __init__(self, fire: Callable[[float], None]) -> None:
        self.fire = fire
        self.deadline: float | None = None

    def arm(self, deadline: float | None) -> None:
        self.deadline = deadline


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
        self.listeners: list[_Listener] = []
        self.timers: list[_Timer] = []
        self.stop_at: float | None = None
        self.stopped = False
        self.calls: deque[Callable[[], None]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, _R, None)
        self.serving = serving = Serving.start(
            config, proxy, clock=time.monotonic, execute=self.execute, timer=self.timer,
            post=self.call_soon_threadsafe, **options,
        )  # fmt: skip
        self.dispatcher = serving.dispatcher
        self.io = Connections(self.sel, serving)
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

    def execute(self, instruction: out.Instruction) -> None:
        match instruction:
            case out.Write(conn, data):
                self.io.write(conn, data)
            case out.ReadDisable(conn) | out.ReadEnable(conn):
                self.io.set_readable(conn, type(instruction) is out.ReadEnable)
            case out.OpenUpstream(conn, host, port, tls):
                self.io.connect(conn, host, port, tls)
            case out.CloseConnection(conn, flush):
                self.io.close(conn, flush)
            case out.ExternalCall() | out.RefreshSlotMap():
                self.serving.execute(instruction)
            case _:
                assert_never(instruction)

    def accept(self, listener: _Listener) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: try again on the next readiness
            self.io.accept(sock, f"{peer[0]}:{peer[1]}", listener.name)

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
                for client, peer in take_backlog(listener.sock):  # closing resets them
                    self.io.accept(client, peer_text(peer), name)
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
            wakes += self.io.wakes()
            wake = min([*wakes, *([] if self.stop_at is None else [self.stop_at])], default=None)
            for key, mask in self.sel.select(None if wake is None else max(0.0, wake - now)):
                data = key.data
                if isinstance(data, Connection):
                    self.io.on_ready(data, mask)
                elif isinstance(data, _Listener):
                    self.accept(data)
                else:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
            while self.calls:
                self.calls.popleft()()
            self.io.flush()
            now = time.monotonic()
            for timer in self.timers:
                if timer.deadline is not None and now >= timer.deadline:
                    timer.fire(timer.deadline)
                    self.io.flush()
            self.io.expire(now)
            if self.stop_at is not None and (self.serving.drained or now >= self.stop_at):
                self.stopped = True

    def shutdown(self) -> None:
        self.io.close_all()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        # A call in flight ends within the limiter's timeout; its verdict is dropped.
        self.worker.close()
        self.wake_w.close()
        if self.limiter is not None:
            self.limiter.close()
        self.serving.close()


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
        bound, admin_sock = serving.bind(handle)
        listeners = [*bound.items(), *([(None, admin_sock)] if admin_sock else [])]
        for name, sock in listeners:
            loop.listeners.append(_Listener(sock, name))
            loop.sel.register(sock, _R, loop.listeners[-1])
        serving.started()
        if ready is not None:
            ready(handle)
        loop.run()
    finally:
        loop.shutdown()

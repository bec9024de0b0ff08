"""anyio adapter: the core under trio or asyncio through anyio, a task per connection.

Embedding (inside ``trio.run`` or ``anyio.run``)::

    async with metaprotocol.adapters.anyio.serve(config) as handle:
        print(handle.ports)
        await handle.drain(timeout=10)

Each connection has a reader task (``receive()``, skipped while the core has reading
disabled: at most one ``READ_CHUNK`` already requested can still arrive) and a writer task
that sends whatever accumulated in the connection's out buffer (up to ``SEND_CHUNK`` at a
time). Watermarks, and the size reported by ``WriteBufferGrew`` above the high one, are
measured on that out buffer (bytes handed to the adapter and not yet accepted by the
kernel), not on the kernel's send buffer: honest, but coarser than asyncio's transport.
Core calls are synchronous, so the single core is safe without locks or channels.
TLS (metaprotocol.tls) is anyio's ``TLSStream`` over the socket stream: a TLS listener's
client is handshaken in a task of its own and reaches the core only once that succeeded;
an upstream reports ``UpstreamConnected`` after its handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext, suppress
from functools import partial
from typing import Any, assert_never

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketListener
from anyio.streams.tls import TLSStream

from metaprotocol.adapters.binding import bound_address
from metaprotocol.adapters.dispatcher import CLOSE_LINGER, READ_CHUNK, Core, Dispatcher, OutBuffer
from metaprotocol.adapters.serving import ServerInfo, Serving
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
from metaprotocol.ratelimit_redis import AnyioRedisRateLimiter
from metaprotocol.tls import HANDSHAKE_TIMEOUT, TlsError, count_handshake_error, server_hostname

__all__ = ["Handle", "serve"]

SEND_CHUNK = 1024 * 1024  # the most one send() copies out of a connection's out buffer
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_HANDSHAKE_FAILED = (anyio.BrokenResourceError, anyio.EndOfStream, OSError, TimeoutError)
_NO_SCOPE = nullcontext()


class _TurnTakingSends(anyio.abc.ByteStream):
    """A socket stream under a ``TLSStream`` whose sends take turns: the TLS layer's reader
    may have to send too (the answer to a key update) while the writer task is sending."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.lock = anyio.Lock()

    @property
    def extra_attributes(self) -> Any:
        return self.stream.extra_attributes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        async with self.lock:
            await self.stream.send(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Connection:
    __slots__ = (
        "closed_by_us",
        "closing",
        "conn",
        "dispatcher",
        "error",
        "out",
        "read_wakeup",
        "readable",
        "scope",
        "started",
        "stream",
        "task",
        "write_scope",
        "writing",
    )

    def __init__(self, conn: int, dispatcher: Dispatcher) -> None:
        self.conn = conn
        self.dispatcher = dispatcher  # the proxy's, or the admin endpoint's
        self.stream: anyio.abc.ByteStream | None = None
        self.out = OutBuffer()
        # What stops the connection's task: the task's own handle where anyio gives one
        # (recent anyio: start_soon returns a TaskHandle), else a cancel scope of our own.
        # One cancel scope per idle connection instead of two saves about a kilobyte.
        self.task: Any = None
        self.scope: anyio.CancelScope | None = None
        self.readable = True
        self.read_wakeup: anyio.Event | None = None
        # The writer is a task of its own only while there is something to write: an idle
        # connection costs one task (its reader), not two plus a task group.
        self.writing = False
        self.write_scope: anyio.CancelScope | None = None
        self.closing = False  # a flushing close was asked for
        self.closed_by_us = False
        self.started = False  # reading and writing (an upstream: connected)
        self.error = ""

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        elif self.scope is not None:
            self.scope.cancel()

    def wake_reader(self) -> None:
        if self.read_wakeup is not None:
            self.read_wakeup.set()


class _Timer:
    """One dispatcher's timer: a task sleeping until the deadline (``run``)."""

    def __init__(self, fire: Callable[[float], None]) -> None:
        self.fire = fire
        self.deadline: float | None = None
        self.wakeup = anyio.Event()

    def arm(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            self.wakeup = wakeup = anyio.Event()
            deadline = self.deadline
            if deadline is None:
                await wakeup.wait()
                continue
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
                await wakeup.wait()
            if scope.cancelled_caught and self.deadline == deadline:
                self.fire(deadline)


class _Server:
    """The streams and tasks of one proxy; ``serving`` is everything else."""

    def __init__(self, tg: Any, config: Any, proxy: Core | None, **options: Any) -> None:
        self.tg = tg  # where connection tasks run: an anyio task group or a trio nursery
        self.conns: dict[int, _Connection] = {}
        self.next_id = 1
        self.limiter: AnyioRedisRateLimiter | None = None
        self.timers: list[_Timer] = []
        self.serving = serving = Serving.start(
            config, proxy, clock=anyio.current_time, execute=self.execute,
            timer=self.timer, **options,
        )  # fmt: skip
        self.dispatcher = serving.dispatcher
        if (redis := serving.config.global_ratelimit_redis) is not None:
            self.limiter = limiter = AnyioRedisRateLimiter.from_config(redis)
            run = serving.calls.run
            serving.calls.register(
                "global_ratelimit", lambda call, arg: tg.start_soon(run, call, limiter.check, arg)
            )

    def timer(self, fire: Callable[[float], None]) -> _Timer:
        self.timers.append(timer := _Timer(fire))
        return timer

    def execute(self, instruction: Instruction) -> None:
        match instruction:
            case Write(conn, data):
                c = self.conns.get(conn)
                if c is not None and not c.closing:
                    if c.out.append(data):
                        c.dispatcher.feed(ev.WriteBufferHigh(conn))
                    if c.out.above:
                        c.dispatcher.feed(ev.WriteBufferGrew(conn, len(c.out.data)))
                    self.kick_writer(c)
            case ReadDisable(conn):
                c = self.conns.get(conn)
                if c is not None:
                    c.readable = False
            case ReadEnable(conn):
                c = self.conns.get(conn)
                if c is not None:
                    c.readable = True
                    c.wake_reader()
            case OpenUpstream(conn, host, port, tls):
                c = self.conns[conn] = _Connection(conn, self.dispatcher)
                self._start(c, self.tg.start_soon(self.run_upstream, c, host, port, tls))
            case CloseConnection(conn, flush):
                c = self.conns.pop(conn, None)
                if c is not None:
                    c.closed_by_us = True
                    if flush and c.stream is not None:
                        c.closing = True
                        self.kick_writer(c)
                    else:
                        c.cancel()
            case ExternalCall():
                self.serving.calls.start(instruction)
            case _:
                assert_never(instruction)

    @staticmethod
    def _start(c: _Connection, task: object) -> None:
        if callable(getattr(task, "cancel", None)):
            c.task = task
        else:  # an anyio without task handles
            c.scope = anyio.CancelScope()

    def accepted(self, stream: anyio.abc.SocketStream, listener: str) -> None:
        """A new client: on a TLS listener handshake first (in a task of its own)."""
        ctx = self.serving.tls.listener(listener)
        if ctx is None:
            self.serve_client(stream, listener)
        else:
            self.tg.start_soon(self.handshake, stream, listener, ctx)

    async def handshake(
        self, stream: anyio.abc.SocketStream, listener: str, ctx: ssl.SSLContext
    ) -> None:
        """A TLS listener's client: serve it once its handshake succeeded; count a failure."""
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT):
                tls = await TLSStream.wrap(
                    _TurnTakingSends(stream),
                    server_side=True,
                    ssl_context=ctx,
                    standard_compatible=False,
                )
        except _HANDSHAKE_FAILED as exc:
            count_handshake_error(self.serving.core.stats, listener, exc)
            await _close(stream)
            return
        if self.serving.draining:
            await _close(tls)
            return
        self.serve_client(tls, listener)

    def serve_client(
        self, stream: anyio.abc.ByteStream, listener: str, dispatcher: Dispatcher | None = None
    ) -> None:
        """Tell the core (or the admin endpoint's) about a client, then serve it in a task
        of its own."""
        c = _Connection(self.next_id, dispatcher or self.dispatcher)
        self.next_id += 1
        c.stream = stream
        self.conns[c.conn] = c
        peer = stream.extra(SocketAttribute.remote_address, None)
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        # Started first (it runs later): a close on ``Accepted`` must find it to cancel.
        self._start(c, self.tg.start_soon(self.run_downstream, c, stream))
        c.dispatcher.feed(ev.Accepted(c.conn, listener, peer_text))

    async def run_downstream(self, c: _Connection, stream: anyio.abc.ByteStream) -> None:
        """A client connection's task: read until it ends (see ``pump``)."""
        try:
            with c.scope or _NO_SCOPE:
                await self.pump(c, stream)
        finally:
            await self.finish(c)

    async def run_upstream(
        self, c: _Connection, host: str, port: int, tls: ClusterTls | None
    ) -> None:
        """An upstream connection's task: connect (and handshake), then read until it ends."""
        try:
            with c.scope or _NO_SCOPE:
                try:
                    c.stream = await self.connect(host, port, tls)
                except (*_HANDSHAKE_FAILED, TlsError) as exc:
                    if self.conns.get(c.conn) is c:
                        del self.conns[c.conn]
                        self.dispatcher.feed(ev.UpstreamConnectFailed(c.conn, str(exc)))
                    return
                self.dispatcher.feed(ev.UpstreamConnected(c.conn))
                await self.pump(c, c.stream)
        finally:
            await self.finish(c)

    async def connect(self, host: str, port: int, tls: ClusterTls | None) -> anyio.abc.ByteStream:
        """A connected stream; with ``tls`` handshaken too (the core's connect_timeout bounds
        both, by closing the connection)."""
        stream = await anyio.connect_tcp(host, port)
        if tls is None:
            return stream
        try:
            return await TLSStream.wrap(
                _TurnTakingSends(stream),
                hostname=server_hostname(tls, host),
                ssl_context=self.serving.tls.upstream(tls),
                standard_compatible=False,
            )
        except BaseException:
            await _close(stream)
            raise

    async def pump(self, c: _Connection, stream: anyio.abc.ByteStream) -> None:
        """Read until the peer's end of stream, then keep writing until the core closes; or
        until an error. (One function: every coroutine frame is held per idle connection.)"""
        c.started = True
        raw = stream.extra(SocketAttribute.raw_socket)
        if raw.family in (socket.AF_INET, socket.AF_INET6):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.kick_writer(c)  # an upstream may have requests queued before it connected
        feed = c.dispatcher.feed
        while True:
            while not c.readable:
                c.read_wakeup = anyio.Event()
                await c.read_wakeup.wait()
            try:
                data = await stream.receive(READ_CHUNK)
            except anyio.EndOfStream:
                if not c.closed_by_us:
                    feed(ev.EofReceived(c.conn))
                await anyio.sleep_forever()  # keep writing: the core decides when to close
            except _GONE as exc:
                c.error = str(exc) or type(exc).__name__
                c.cancel()
                return
            if not c.closed_by_us:
                feed(ev.DataReceived(c.conn, data))

    def kick_writer(self, c: _Connection) -> None:
        """Start a writer task for ``c`` when it has bytes to send (or a close to finish)."""
        if c.writing or not c.started or c.stream is None:
            return
        if c.out.data or c.closing:
            c.writing = True
            self.tg.start_soon(self.write_loop, c, c.stream)

    async def finish(self, c: _Connection) -> None:
        if c.write_scope is not None:
            c.write_scope.cancel()
        if c.stream is not None:
            await _close(c.stream)
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
        if c.started and not c.closed_by_us:
            c.dispatcher.feed(ev.Closed(c.conn, c.error))

    async def write_loop(self, c: _Connection, stream: anyio.abc.ByteStream) -> None:
        """Send what is buffered, then end (``kick_writer`` starts a new one when needed)."""
        out = c.out
        try:
            with anyio.CancelScope() as scope:
                c.write_scope = scope
                while out.data:
                    # A bounded copy: a peer that does not read holds this one while the
                    # buffer behind it grows, so it must not be the whole buffer again.
                    pending = out.data
                    data = bytes(pending[:SEND_CHUNK] if len(pending) > SEND_CHUNK else pending)
                    try:
                        with anyio.move_on_after(CLOSE_LINGER if c.closing else None) as linger:
                            await stream.send(data)
                    except _GONE as exc:
                        c.error = str(exc) or type(exc).__name__
                        c.cancel()
                        return
                    if linger.cancelled_caught:  # a closing peer that does not read: give up
                        c.cancel()
                        return
                    if out.consumed(len(data)) and not c.closed_by_us:
                        c.dispatcher.feed(ev.WriteBufferLow(c.conn))
                if c.closing:  # closing and flushed
                    c.cancel()
        finally:
            c.write_scope = None
            c.writing = False


async def _close(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        with suppress(*_GONE):
            await stream.aclose()


class Handle(ServerInfo):
    """A running proxy inside the caller's trio or asyncio program."""

    def __init__(self, server: _Server, tg: anyio.abc.TaskGroup) -> None:
        super().__init__()
        self._server = server
        self.serving = server.serving
        self._tg = tg  # where accepting tasks run
        self._accepting: dict[str, anyio.CancelScope] = {}  # per listener name
        self._background: list[anyio.CancelScope] = []  # accepting, admin, the timers
        self._listeners: dict[str, anyio.abc.Listener[anyio.abc.SocketStream]] = {}
        self._admin_listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def proxy(self) -> Core:
        return self.serving.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self.serving.dispatcher

    def _start(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in a cancel scope of its own, stopped by ``close``."""
        self._background.append(scope := anyio.CancelScope())
        self._tg.start_soon(_in_scope, partial(fn, *args), scope)

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain). Binding happens
        first: if a listener cannot be bound this raises and nothing changes."""
        changes = self.serving.reload(config)
        changes.update(self.addresses)
        for name in changes.removed:
            scope = self._accepting.pop(name, None)
            if scope is not None:
                scope.cancel()  # its accept loop closes the listener on the way out
            self._listeners.pop(name, None)
        for name, sock in changes.added.items():
            self._accepting[name] = scope = anyio.CancelScope()
            self._background.append(scope)
            self._tg.start_soon(self._accept_on, name, sock, scope)

    async def _accept_on(self, name: str, sock: socket.socket, scope: anyio.CancelScope) -> None:
        try:
            listener = await SocketListener.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        if scope.cancel_called:
            await _close(listener)
            return
        self._listeners[name] = listener
        await _listen(listener, partial(self._server.accepted, listener=name), scope)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout``, then close."""
        await self._stop_accepting()
        done = anyio.Event()
        self.serving.start_drain(done.set)
        if not self.serving.drained:
            with anyio.move_on_after(timeout):
                await done.wait()
        await self.close()

    async def _stop_accepting(self) -> None:
        for scope in self._accepting.values():
            scope.cancel()
        for listener in list(self._listeners.values()):
            await _close(listener)

    async def close(self) -> None:
        """Close listeners and every connection, and stop the proxy's tasks."""
        server, serving = self._server, self.serving
        if serving.closed:
            return
        serving.closed = serving.draining = True
        for c in list(server.conns.values()):
            c.closed_by_us = True
            c.cancel()
        server.conns.clear()
        if server.limiter is not None:
            await server.limiter.aclose()
        serving.close_logs()
        await self._stop_accepting()
        if self._admin_listener is not None:
            await _close(self._admin_listener)
        for scope in self._background:
            scope.cancel()


async def _in_scope(fn: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    with scope:
        await fn()


async def _listen(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    handler: Callable[[anyio.abc.SocketStream], Any],
    scope: anyio.CancelScope,
) -> None:
    """Accept until ``scope`` is cancelled (drain) or the listener is closed; ``handler``
    starts each connection's task in the server's task group, so cancelling ``scope``
    stops accepting and nothing else."""
    with scope:
        try:
            async with listener:
                subs: list[Any] = list(getattr(listener, "listeners", None) or [listener])
                if len(subs) == 1:
                    await _accept_loop(subs[0], handler)
                else:  # a listener per address family
                    async with anyio.create_task_group() as tg:
                        for sub in subs:
                            tg.start_soon(_accept_loop, sub, handler)
        except anyio.ClosedResourceError:  # Handle.close closed it under us
            pass


async def _accept_loop(listener: Any, handler: Callable[[anyio.abc.SocketStream], Any]) -> None:
    while True:
        handler(await listener.accept())


@asynccontextmanager
async def _connection_tasks(tg: anyio.abc.TaskGroup) -> AsyncIterator[Any]:
    """Where connection tasks are started: under trio a plain trio nursery inside ``tg``
    (an anyio task handle costs about 0.7 KiB per idle connection), else ``tg`` itself.
    Both offer ``start_soon(fn, *args)`` and ``cancel_scope``."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:  # trio is imported, but this is not a trio run
            trio = None
    if trio is None:
        yield tg
        return
    async with trio.open_nursery() as nursery:
        yield nursery


@asynccontextmanager
async def serve(
    config: Config | str | os.PathLike[str],
    *,
    proxy: Core | None = None,
    reuse_port: bool = False,
    admin: bool = True,
) -> AsyncIterator[Handle]:
    """Serve ``config`` while the block runs; leaving the block closes everything."""
    async with anyio.create_task_group() as tg, _connection_tasks(tg) as conn_tasks:
        server = _Server(conn_tasks, config, proxy, reuse_port=reuse_port, admin=admin)
        handle, serving = Handle(server, tg), server.serving
        try:
            for spec in serving.config.listeners:
                listener = await anyio.create_tcp_listener(
                    local_host=spec.host, local_port=spec.port, reuse_port=reuse_port, backlog=1024
                )
                handle.addresses[spec.name] = bound_address(
                    listener.extra(SocketAttribute.local_address)
                )
                handle._listeners[spec.name] = listener
                handle._accepting[spec.name] = scope = anyio.CancelScope()
                handle._background.append(scope)
                tg.start_soon(
                    _listen, listener, partial(server.accepted, listener=spec.name), scope
                )
            if serving.admin is not None and serving.config.admin is not None:
                admin_listener = await anyio.create_tcp_listener(
                    local_host=serving.config.admin.host, local_port=serving.config.admin.port
                )
                handle.admin_address = bound_address(
                    admin_listener.extra(SocketAttribute.local_address)
                )
                handle._admin_listener = admin_listener
                on_admin = partial(server.serve_client, listener="admin", dispatcher=serving.admin)
                handle._background.append(scope := anyio.CancelScope())
                tg.start_soon(_listen, admin_listener, on_admin, scope)
            for timer in server.timers:
                handle._start(timer.run)
            serving.started()
            yield handle
        finally:
            await handle.close()
            conn_tasks.cancel_scope.cancel()  # whatever is left: writers, rate-limit calls
            tg.cancel_scope.cancel()

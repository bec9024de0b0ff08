"""The anyio adapter's connections (see metaprotocol.adapters.anyio): each connection's
tasks (reader, writer, connect and TLS handshake) and what they feed the core. The server
hands instructions to ``Streams``; the handle owns the listeners."""

from __future__ import annotations

import socket
import ssl
from contextlib import nullcontext, suppress
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from metaprotocol.adapters.anyio_tls import HANDSHAKE_FAILED, wrap_client, wrap_server
from metaprotocol.adapters.binding import peer_text, set_nodelay
from metaprotocol.adapters.dispatcher import CLOSE_LINGER, READ_CHUNK, Dispatcher, OutBuffer
from metaprotocol.adapters.serving import Serving
from metaprotocol.core import events as ev
from metaprotocol.core.config import ClusterTls
from metaprotocol.tls import TlsError, count_handshake_error

try:  # trio is an optional extra; its plain TCP fast path is only used under trio
    from metaprotocol.adapters import trio_sockets
except ImportError:  # pragma: no cover
    trio_sockets = None  # type: ignore[assignment]

__all__ = ["SEND_CHUNK", "Connection", "Streams", "close_quietly"]

SEND_CHUNK = 1024 * 1024  # the most one send() copies out of a connection's out buffer
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_NO_SCOPE = nullcontext()


class Connection:
    """One downstream, upstream or admin stream and its tasks' state."""

    __slots__ = (
        "closed_by_us", "closing", "conn", "dispatcher", "error", "out", "read_wakeup",
        "readable", "scope", "sock", "started", "stream", "task", "write_scope", "writing",
    )  # fmt: skip

    def __init__(self, conn: int, dispatcher: Dispatcher) -> None:
        self.conn = conn
        self.dispatcher = dispatcher  # the proxy's, or the admin endpoint's
        self.stream: anyio.abc.ByteStream | None = None
        self.sock: socket.socket | None = None  # under trio, plain TCP: see trio_sockets
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
        self.write_scope: Any = None  # the writer's anyio or trio cancel scope
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


class Streams:
    """Every connection of one proxy and its tasks, started in ``tg`` (an anyio task group
    or a trio nursery; ``on_trio``: plain TCP connections run on their sockets)."""

    def __init__(self, tg: Any, serving: Serving, on_trio: bool = False) -> None:
        self.tg = tg
        self.on_trio = on_trio
        self.serving = serving
        self.dispatcher = serving.dispatcher
        self.conns: dict[int, Connection] = {}
        self.next_id = 1

    # -- instructions ---------------------------------------------------------------------

    def write(self, conn: int, data: bytes) -> None:
        c = self.conns.get(conn)
        if c is not None and not c.closing:
            # On a socket with nothing queued: send at once what the kernel takes.
            sock = c.sock if not c.out.data else None
            if sock is not None and not (data := trio_sockets.send_now(c, sock, data)):
                return
            if c.out.append(data):
                c.dispatcher.feed(ev.WriteBufferHigh(conn))
            if c.out.above:
                c.dispatcher.feed(ev.WriteBufferGrew(conn, len(c.out.data)))
            self.kick_writer(c)

    def set_readable(self, conn: int, readable: bool) -> None:
        c = self.conns.get(conn)
        if c is not None:
            c.readable = readable
            if readable:
                c.wake_reader()

    def open(self, conn: int, host: str, port: int, tls: ClusterTls | None) -> None:
        c = self.conns[conn] = Connection(conn, self.dispatcher)
        self._start(c, self.tg.start_soon(self.run_upstream, c, host, port, tls))

    def close(self, conn: int, flush: bool) -> None:
        c = self.conns.pop(conn, None)
        if c is not None:
            c.closed_by_us = True
            if flush and c.stream is not None:
                c.closing = True
                self.kick_writer(c)
            else:
                c.cancel()

    def close_all(self) -> None:
        for c in list(self.conns.values()):
            c.closed_by_us = True
            c.cancel()
        self.conns.clear()

    # -- a connection's tasks -------------------------------------------------------------

    @staticmethod
    def _start(c: Connection, task: object) -> None:
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
            tls = await wrap_server(stream, ctx)
        except HANDSHAKE_FAILED as exc:
            count_handshake_error(self.serving.core.stats, listener, exc)
            await close_quietly(stream)
            return
        if self.serving.draining:
            await close_quietly(tls)
            return
        self.serve_client(tls, listener)

    def serve_client(
        self, stream: anyio.abc.ByteStream, listener: str, dispatcher: Dispatcher | None = None
    ) -> None:
        """Tell the core (or the admin endpoint's) about a client, then serve it in a task
        of its own."""
        c = Connection(self.next_id, dispatcher or self.dispatcher)
        self.next_id += 1
        c.stream = stream
        self.conns[c.conn] = c
        peer = peer_text(stream.extra(SocketAttribute.remote_address, None))
        # Started first (it runs later): a close on ``Accepted`` must find it to cancel.
        self._start(c, self.tg.start_soon(self.run_downstream, c, stream))
        c.dispatcher.feed(ev.Accepted(c.conn, listener, peer))

    async def run_downstream(self, c: Connection, stream: anyio.abc.ByteStream) -> None:
        """A client connection's task: read until it ends (see ``pump``)."""
        try:
            with c.scope or _NO_SCOPE:
                await self.pump(c, stream)
        finally:
            await self.finish(c)

    async def run_upstream(
        self, c: Connection, host: str, port: int, tls: ClusterTls | None
    ) -> None:
        """An upstream connection's task: connect (and handshake), then read until it ends."""
        try:
            with c.scope or _NO_SCOPE:
                try:
                    c.stream = await self.connect(host, port, tls)
                except (*HANDSHAKE_FAILED, TlsError) as exc:
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
            return await wrap_client(stream, self.serving.tls.upstream(tls), tls, host)
        except BaseException:
            await close_quietly(stream)
            raise

    async def pump(self, c: Connection, stream: anyio.abc.ByteStream) -> None:
        """Read until the peer's end of stream, then keep writing until the core closes; or
        until an error. (One function: every coroutine frame is held per idle connection.)"""
        c.started = True
        set_nodelay(stream.extra(SocketAttribute.raw_socket))
        if self.on_trio:
            c.sock = trio_sockets.socket_of(stream)
        self.kick_writer(c)  # an upstream may have requests queued before it connected
        if c.sock is not None:
            return await trio_sockets.pump(c, c.sock)
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

    def kick_writer(self, c: Connection) -> None:
        """Start a writer task for ``c`` when it has bytes to send (or a close to finish)."""
        if c.writing or not c.started or c.stream is None:
            return
        if c.out.data or c.closing:
            c.writing = True
            if c.sock is not None:
                self.tg.start_soon(trio_sockets.write_loop, c, c.sock)
            else:
                self.tg.start_soon(self.write_loop, c, c.stream)

    async def finish(self, c: Connection) -> None:
        if c.write_scope is not None:
            c.write_scope.cancel()
        if c.stream is not None:
            await close_quietly(c.stream)
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
        if c.started and not c.closed_by_us:
            c.dispatcher.feed(ev.Closed(c.conn, c.error))

    async def write_loop(self, c: Connection, stream: anyio.abc.ByteStream) -> None:
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


async def close_quietly(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        with suppress(*_GONE):
            await stream.aclose()

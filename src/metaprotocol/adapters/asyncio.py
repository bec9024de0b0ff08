"""asyncio adapter: the core on ``asyncio.Protocol`` sockets (uvloop works the same).

Embedding::

    handle = await metaprotocol.adapters.asyncio.serve(config)
    print(handle.ports)           # listener name -> bound port (port 0 binds a free one)
    await handle.drain(timeout=10)  # or: await handle.close()

Writes are coalesced per connection and flushed once per loop iteration; the transport's
``pause_writing``/``resume_writing`` become ``WriteBufferHigh``/``WriteBufferLow``, and the
transport's buffer size after each flush between them ``WriteBufferGrew``;
``ReadDisable``/``ReadEnable`` pause and resume reading. ``loop.time()`` is the core's clock.
TLS (metaprotocol.tls) is the loop's own: a TLS listener accepts itself and hands each
client to ``connect_accepted_socket(ssl=...)`` (the core hears of it once the handshake is
done); upstream ``create_connection(ssl=...)`` (``UpstreamConnected`` after the handshake).
What is not IO is ``metaprotocol.adapters.serving``'s; the connections (admin ones too)
are in ``metaprotocol.adapters.asyncio_connections``, starting and retiring listeners in
``metaprotocol.adapters.asyncio_listening``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Coroutine
from typing import Any, assert_never

from metaprotocol.adapters.asyncio_connections import Connection, Timer
from metaprotocol.adapters.asyncio_listening import Listener, listen, retire
from metaprotocol.adapters.dispatcher import CLOSE_LINGER, HIGH_WATERMARK, Core, Dispatcher
from metaprotocol.adapters.serving import ServerInfo, Serving
from metaprotocol.core import events as ev
from metaprotocol.core import outputs as out
from metaprotocol.core.config import ClusterTls, Config
from metaprotocol.ratelimit_redis import AsyncioRedisRateLimiter
from metaprotocol.tls import server_hostname

__all__ = ["Handle", "serve"]


class _Server:
    """The sockets and tasks of one proxy; ``serving`` is everything else."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: Any, proxy: Core | None, **options: Any
    ) -> None:
        self.loop = loop
        self.conns: dict[int, Connection] = {}
        self.pending: dict[int, list[bytes]] = {}
        self.coalesced: dict[int, int] = {}  # bytes in pending lists of two chunks or more
        self.next_id = 1
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.limiter: AsyncioRedisRateLimiter | None = None
        self.serving = serving = Serving.start(
            config, proxy, clock=loop.time, execute=self.execute, write=self.queue_write,
            timer=lambda fire: Timer(loop, fire), post=loop.call_soon_threadsafe, **options,
        )  # fmt: skip
        self.dispatcher = serving.dispatcher
        if (redis := serving.config.global_ratelimit_redis) is not None:
            self.limiter = limiter = AsyncioRedisRateLimiter.from_config(redis)
            serving.calls.register(
                "global_ratelimit",
                lambda call, payload: self.spawn(serving.calls.run(call, limiter.check, payload)),
            )

    def adopt(self, connection: Connection) -> int:
        conn = self.next_id
        self.next_id += 1
        self.conns[conn] = connection
        return conn

    def forget(self, connection: Connection) -> bool:
        assert connection.conn is not None
        if self.conns.get(connection.conn) is not connection:
            return False
        del self.conns[connection.conn]
        self.pending.pop(connection.conn, None)
        return True

    def connected(self, conn: int) -> None:
        if conn in self.pending:
            self.schedule_flush()

    def queue_write(self, conn: int, data: bytes) -> None:
        """Coalesced per connection, flushed once per loop iteration or at once past the high
        watermark (uvloop reads megabytes an iteration: the core must hear it is full)."""
        if (chunks := self.pending.get(conn)) is None:
            self.pending[conn] = [data]
            self.schedule_flush()
            return
        chunks.append(data)
        size = self.coalesced[conn] = self.coalesced.get(conn, len(chunks[0])) + len(data)
        if size >= HIGH_WATERMARK:
            del self.pending[conn], self.coalesced[conn]
            self.flush_one(conn, chunks)

    def execute(self, instruction: out.Instruction) -> None:
        match instruction:
            case out.Write(conn, data):
                self.queue_write(conn, data)
            case out.ReadDisable(conn) | out.ReadEnable(conn):
                proto = self.conns.get(conn)
                if proto is not None:
                    proto.read_disabled = type(instruction) is out.ReadDisable
                    if proto.transport is not None and not proto.transport.is_closing():
                        if proto.read_disabled:
                            proto.transport.pause_reading()
                        else:
                            proto.transport.resume_reading()
            case out.OpenUpstream(conn, host, port, tls):
                proto = Connection(self, self.dispatcher, conn, None, half_close=tls is None)
                self.conns[conn] = proto
                proto.connect_task = self.spawn(self.connect(proto, host, port, tls))
            case out.CloseConnection(conn, flush):
                self.close_connection(conn, flush)
            case out.ExternalCall() | out.RefreshSlotMap():
                self.serving.execute(instruction)
            case _:
                assert_never(instruction)

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        pending, self.pending = self.pending, {}
        self.coalesced.clear()
        for conn, chunks in pending.items():
            self.flush_one(conn, chunks)

    def flush_one(self, conn: int, chunks: list[bytes]) -> None:
        proto = self.conns.get(conn)
        if proto is None:
            return
        if proto.transport is None:  # an upstream still connecting: keep it for later
            self.pending[conn] = chunks
            return
        transport = proto.transport
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if proto.write_paused and not proto.closed_by_us:
            size = transport.get_write_buffer_size()
            proto.dispatcher.feed(ev.WriteBufferGrew(conn, size))

    def close_connection(self, conn: int, flush: bool) -> None:
        proto = self.conns.pop(conn, None)
        chunks = self.pending.pop(conn, None)
        if proto is None:
            return
        proto.closed_by_us = True
        transport = proto.transport
        if transport is None:
            if proto.connect_task is not None:
                proto.connect_task.cancel()
            return
        if flush:
            if chunks:
                transport.write(b"".join(chunks))
            transport.close()
            proto.linger = self.loop.call_later(CLOSE_LINGER, transport.abort)
        else:
            transport.abort()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def connect(
        self, proto: Connection, host: str, port: int, tls: ClusterTls | None
    ) -> None:
        try:
            if tls is None:
                await self.loop.create_connection(lambda: proto, host, port)
            else:  # the core's connect_timeout bounds the handshake too
                await self.loop.create_connection(
                    lambda: proto,
                    host,
                    port,
                    ssl=self.serving.tls.upstream(tls),
                    server_hostname=server_hostname(tls, host),
                )
        except (OSError, ValueError) as exc:  # ValueError: ssl.CertificateError, TlsError
            if self.forget(proto):
                assert proto.conn is not None
                self.dispatcher.feed(ev.UpstreamConnectFailed(proto.conn, str(exc)))


class Handle(ServerInfo):
    """A running proxy inside the caller's event loop."""

    def __init__(self, server: _Server) -> None:
        super().__init__()
        self._server = server
        self.serving = server.serving
        self._listeners: dict[str, tuple[Listener, socket.socket]] = {}
        self._binding: dict[str, socket.socket] = {}  # added by a reload, not yet accepting
        self._admin: Listener | None = None

    @property
    def proxy(self) -> Core:
        return self.serving.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self.serving.dispatcher

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain, the clients in
        their backlogs are served). Binding happens first: if a listener cannot be bound
        this raises and nothing changes."""
        changes = self.serving.reload(config)
        changes.update(self.addresses)
        for name in changes.removed:
            if (listening := self._listeners.pop(name, None)) is not None:
                retire(self._server, name, *listening)
            self._binding.pop(name, None)
        for name, sock in changes.added.items():
            self._binding[name] = sock
            self._server.spawn(self._accept_on(name, sock))

    async def _accept_on(self, name: str, sock: socket.socket) -> None:
        try:
            listener = await listen(self._server, name, sock)
        except BaseException:
            sock.close()
            raise
        if self.serving.draining or self._binding.get(name) is not sock:
            listener.close()  # closed, draining, or removed or moved again meanwhile
        else:
            del self._binding[name]
            self._listeners[name] = listener, sock

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout``, then close."""
        for listener, _ in self._listeners.values():
            listener.close()
        done = asyncio.Event()
        self.serving.start_drain(done.set)
        if not self.serving.drained:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        await self.close()

    async def close(self) -> None:
        """Close listeners and every connection now."""
        server, serving = self._server, self.serving
        if serving.closed:
            return
        serving.closed = serving.draining = True
        servers = [lst for lst, _ in self._listeners.values()]
        servers += [self._admin] if self._admin else []
        for listener in servers:
            listener.close()
        for timer in serving.timers:
            timer.arm(None)
        for conn in list(server.conns):
            server.close_connection(conn, flush=False)
        for task in list(server.tasks):
            task.cancel()
        if server.tasks:
            await asyncio.gather(*server.tasks, return_exceptions=True)
        if server.limiter is not None:
            await server.limiter.aclose()
        for listener in servers:
            await listener.wait_closed()
        serving.close()
        await asyncio.sleep(0)  # let aborted transports run connection_lost


async def serve(
    config: Config | str | os.PathLike[str],
    *,
    proxy: Core | None = None,
    reuse_port: bool = False,
    admin: bool = True,
) -> Handle:
    """Start listening for every listener in ``config`` (and the admin endpoint, the access
    log and the global rate limiter's Redis client when configured); return at once."""
    loop = asyncio.get_running_loop()
    server = _Server(loop, config, proxy, reuse_port=reuse_port, admin=admin)
    handle, serving = Handle(server), server.serving
    try:
        bound, admin_sock = serving.bind(handle)
        for name, sock in bound.items():
            handle._listeners[name] = await listen(server, name, sock), sock
        if admin_sock is not None:
            handle._admin = await listen(server, "admin", admin_sock, serving.admin)
    except BaseException:
        await handle.close()
        raise
    serving.started()
    return handle

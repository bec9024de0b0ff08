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
What is not IO (setup, reload, drain, external calls, the admin endpoint's core) is
``metaprotocol.adapters.serving``'s; admin connections are ``_Connection``s too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any, assert_never, cast

from metaprotocol.adapters.binding import bind_socket, bound_address
from metaprotocol.adapters.dispatcher import (
    CLOSE_LINGER,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    Core,
    Dispatcher,
)
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
from metaprotocol.ratelimit_redis import AsyncioRedisRateLimiter
from metaprotocol.tls import HANDSHAKE_TIMEOUT, count_handshake_error, server_hostname

__all__ = ["Handle", "serve"]


class _Connection(asyncio.Protocol):
    """One downstream, upstream or admin socket; ``conn`` is None until it is accepted."""

    def __init__(
        self, server: _Server, conn: int | None, listener: str | None, half_close: bool = True
    ) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        self.conn = conn
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.read_disabled = False
        self.write_paused = False  # between pause_writing and resume_writing
        self.closed_by_us = False
        self.connect_task: asyncio.Task[None] | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.half_close = half_close  # False over TLS: the loop closes it at EOF anyway

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop: no subclass
        if self.closed_by_us:  # the core closed it while the connect was in flight
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=HIGH_WATERMARK, low=LOW_WATERMARK)
        server = self.server
        if self.listener is not None:
            self.conn = conn = server.next_id
            server.next_id += 1
            server.conns[conn] = self
            peer = transport.get_extra_info("peername")
            peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
            self.dispatcher.feed(ev.Accepted(conn, self.listener, peer_text))
        else:
            assert self.conn is not None
            if self.read_disabled:
                transport.pause_reading()
            self.dispatcher.feed(ev.UpstreamConnected(self.conn))
            if self.conn in server.pending:
                server.schedule_flush()

    def data_received(self, data: bytes) -> None:
        if self.conn is not None and not self.closed_by_us:
            self.dispatcher.feed(ev.DataReceived(self.conn, data))

    def eof_received(self) -> bool:
        if self.conn is not None and not self.closed_by_us:
            self.dispatcher.feed(ev.EofReceived(self.conn))
        return self.half_close  # stay half-open: the core decides when to close

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.conn is not None and not self.closed_by_us:
            self.dispatcher.feed(ev.WriteBufferHigh(self.conn))

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.conn is not None and not self.closed_by_us:
            self.dispatcher.feed(ev.WriteBufferLow(self.conn))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linger is not None:
            self.linger.cancel()
        conn = self.conn
        if conn is None:
            return
        server = self.server
        if server.conns.get(conn) is self:
            del server.conns[conn]
            server.pending.pop(conn, None)
        if not self.closed_by_us:
            self.dispatcher.feed(ev.Closed(conn, "" if exc is None else str(exc)))


class _TlsListener:
    """A TLS listener: accepts on its socket itself and hands each client to
    ``connect_accepted_socket`` with the listener's current context, so the loop's TLS does
    the handshake, the core hears of the client (``connection_made``) only once that
    succeeded, and a failure is an exception here, counted. (``start_tls`` on a transport
    from ``create_server`` cannot be used: uvloop starts reading right after
    ``connection_made``, and the ClientHello would reach the plaintext protocol.)"""

    def __init__(self, server: _Server, name: str, sock: socket.socket) -> None:
        self.server, self.name, self.sock = server, name, sock
        self.handshakes: set[asyncio.Task[None]] = set()
        self.task = server.spawn(self.accept_loop())

    async def accept_loop(self) -> None:
        while True:
            try:
                client, _ = await self.server.loop.sock_accept(self.sock)
            except OSError:  # e.g. EMFILE: back off a little, then try again
                await asyncio.sleep(0.1)
                continue
            task = self.server.spawn(self.handshake(client))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def handshake(self, client: socket.socket) -> None:
        server = self.server
        ctx = server.serving.tls.listener(self.name)
        if ctx is None:  # a reload cannot turn TLS off at the same address; be safe anyway
            client.close()
            return
        try:
            await server.loop.connect_accepted_socket(
                lambda: _Connection(server, None, self.name, half_close=False),
                client,
                ssl=ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError, a reset, the handshake timeout
            count_handshake_error(server.serving.core.stats, self.name, exc)
            client.close()

    def close(self) -> None:
        """Stop accepting, and drop clients still handshaking (the core never saw them)."""
        self.task.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        pass


class _Timer:
    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[float], None]) -> None:
        self.loop, self.fire = loop, fire
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, deadline: float | None) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if deadline is not None:
            self.handle = self.loop.call_at(deadline, self.fire, deadline)


class _Server:
    """The sockets and tasks of one proxy; ``serving`` is everything else."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: Any, proxy: Core | None, **options: Any
    ) -> None:
        self.loop = loop
        self.conns: dict[int, _Connection] = {}
        self.pending: dict[int, list[bytes]] = {}
        self.next_id = 1
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.limiter: AsyncioRedisRateLimiter | None = None
        self.serving = serving = Serving.start(
            config, proxy, clock=loop.time, execute=self.execute,
            timer=lambda fire: _Timer(loop, fire), write=self.queue_write, **options,
        )  # fmt: skip
        self.dispatcher = serving.dispatcher
        if (redis := serving.config.global_ratelimit_redis) is not None:
            self.limiter = limiter = AsyncioRedisRateLimiter.from_config(redis)
            serving.calls.register(
                "global_ratelimit",
                lambda call, payload: self.spawn(serving.calls.run(call, limiter.check, payload)),
            )

    def queue_write(self, conn: int, data: bytes) -> None:
        """Writes are coalesced per connection and flushed once per loop iteration."""
        chunks = self.pending.get(conn)
        if chunks is None:
            self.pending[conn] = [data]
        else:
            chunks.append(data)
        self.schedule_flush()

    def execute(self, instruction: Instruction) -> None:
        match instruction:
            case Write(conn, data):
                self.queue_write(conn, data)
            case ReadDisable(conn) | ReadEnable(conn):
                proto = self.conns.get(conn)
                if proto is not None:
                    proto.read_disabled = type(instruction) is ReadDisable
                    if proto.transport is not None and not proto.transport.is_closing():
                        if proto.read_disabled:
                            proto.transport.pause_reading()
                        else:
                            proto.transport.resume_reading()
            case OpenUpstream(conn, host, port, tls):
                proto = _Connection(self, conn, None, half_close=tls is None)
                self.conns[conn] = proto
                proto.connect_task = self.spawn(self.connect(proto, host, port, tls))
            case CloseConnection(conn, flush):
                self.close_connection(conn, flush)
            case ExternalCall():
                self.serving.calls.start(instruction)
            case _:
                assert_never(instruction)

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        pending, self.pending = self.pending, {}
        for conn, chunks in pending.items():
            proto = self.conns.get(conn)
            if proto is None:
                continue
            if proto.transport is None:  # an upstream still connecting: keep it for later
                self.pending[conn] = chunks
                continue
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

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def connect(
        self, proto: _Connection, host: str, port: int, tls: ClusterTls | None
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
            assert proto.conn is not None
            if self.conns.get(proto.conn) is proto:
                del self.conns[proto.conn]
                self.pending.pop(proto.conn, None)
                self.dispatcher.feed(ev.UpstreamConnectFailed(proto.conn, str(exc)))

    async def listen(self, name: str, sock: socket.socket) -> asyncio.Server | _TlsListener:
        """Accept on a bound socket: a TLS listener accepts itself (see ``_TlsListener``)."""
        if self.serving.tls.listener(name) is not None:
            return _TlsListener(self, name, sock)
        return await self.loop.create_server(
            lambda: _Connection(self, None, name), sock=sock, backlog=1024
        )


class Handle(ServerInfo):
    """A running proxy inside the caller's event loop."""

    def __init__(self, server: _Server) -> None:
        super().__init__()
        self._server = server
        self.serving = server.serving
        self._listeners: dict[str, asyncio.Server | _TlsListener] = {}
        self._binding: dict[str, socket.socket] = {}  # added by a reload, not yet accepting
        self._admin: asyncio.Server | None = None

    @property
    def proxy(self) -> Core:
        return self.serving.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self.serving.dispatcher

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain). Binding happens
        first: if a listener cannot be bound this raises and nothing changes."""
        changes = self.serving.reload(config)
        changes.update(self.addresses)
        for name in changes.removed:
            listener = self._listeners.pop(name, None)
            if listener is not None:
                listener.close()
            self._binding.pop(name, None)
        for name, sock in changes.added.items():
            self._binding[name] = sock
            self._server.spawn(self._accept_on(name, sock))

    async def _accept_on(self, name: str, sock: socket.socket) -> None:
        try:
            listener = await self._server.listen(name, sock)
        except BaseException:
            sock.close()
            raise
        if self.serving.draining or self._binding.get(name) is not sock:
            listener.close()  # closed, draining, or removed or moved again meanwhile
        else:
            del self._binding[name]
            self._listeners[name] = listener

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout``, then close."""
        for listener in self._listeners.values():
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
        servers = [*self._listeners.values(), *([self._admin] if self._admin else [])]
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
        serving.close_logs()
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
        for spec in serving.config.listeners:
            sock = bind_socket(spec.host, spec.port, reuse_port)
            handle.addresses[spec.name] = bound_address(sock.getsockname())
            handle._listeners[spec.name] = await server.listen(spec.name, sock)
        if serving.admin is not None and serving.config.admin is not None:
            admin_config, dispatcher = serving.config.admin, serving.admin

            def admin_connection() -> _Connection:
                connection = _Connection(server, None, "admin")
                connection.dispatcher = dispatcher
                return connection

            handle._admin = await loop.create_server(
                admin_connection, admin_config.host, admin_config.port, reuse_port=None
            )
            handle.admin_address = bound_address(handle._admin.sockets[0].getsockname())
    except BaseException:
        await handle.close()
        raise
    serving.started()
    return handle

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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, assert_never, cast

from metaprotocol.accesslog import AccessLog
from metaprotocol.adapters.dispatch import (
    CLOSE_LINGER,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    Core,
    Dispatcher,
    ServerInfo,
    bind_and_reload,
    bind_socket,
    bound_address,
    build_core,
    global_ratelimit_redis,
    resolve_config,
)
from metaprotocol.admin import AdminApp, AdminConnection, AdmissionGate
from metaprotocol.core.config import AdminConfig, ClusterTls, Config
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    UpstreamConnected,
    UpstreamConnectFailed,
    WriteBufferGrew,
    WriteBufferHigh,
    WriteBufferLow,
)
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
from metaprotocol.tls import (
    HANDSHAKE_TIMEOUT,
    TlsContexts,
    count_handshake_error,
    server_hostname,
)

__all__ = ["Handle", "serve"]


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Connection(asyncio.Protocol):
    """One downstream or upstream socket; ``conn`` is None until a downstream is accepted."""

    def __init__(
        self, server: _Server, conn: int | None, listener: str | None, half_close: bool = True
    ) -> None:
        self.server = server
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
        _nodelay(transport)
        transport.set_write_buffer_limits(high=HIGH_WATERMARK, low=LOW_WATERMARK)
        server = self.server
        if self.listener is not None:
            self.conn = conn = server.next_id
            server.next_id += 1
            server.conns[conn] = self
            peer = transport.get_extra_info("peername")
            peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
            server.dispatcher.feed(Accepted(conn, self.listener, peer_text))
        else:
            assert self.conn is not None
            if self.read_disabled:
                transport.pause_reading()
            server.dispatcher.feed(UpstreamConnected(self.conn))
            if self.conn in server.pending:
                server.schedule_flush()

    def data_received(self, data: bytes) -> None:
        if self.conn is not None and not self.closed_by_us:
            self.server.dispatcher.feed(DataReceived(self.conn, data))

    def eof_received(self) -> bool:
        if self.conn is not None and not self.closed_by_us:
            self.server.dispatcher.feed(EofReceived(self.conn))
        return self.half_close  # stay half-open: the core decides when to close

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.conn is not None and not self.closed_by_us:
            self.server.dispatcher.feed(WriteBufferHigh(self.conn))

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.conn is not None and not self.closed_by_us:
            self.server.dispatcher.feed(WriteBufferLow(self.conn))

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
            server.dispatcher.feed(Closed(conn, "" if exc is None else str(exc)))


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
        loop = self.server.loop
        while True:
            try:
                client, _ = await loop.sock_accept(self.sock)
            except OSError:  # e.g. EMFILE: back off a little, then try again
                await asyncio.sleep(0.1)
                continue
            task = self.server.spawn(self.handshake(client))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def handshake(self, client: socket.socket) -> None:
        server = self.server
        ctx = server.tls.listener(self.name)
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
            count_handshake_error(server.core.stats, self.name, exc)
            client.close()

    def close(self) -> None:
        """Stop accepting, and drop clients still handshaking (the core never saw them)."""
        self.task.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        pass


class _AdminProtocol(asyncio.Protocol):
    """One admin connection (see metaprotocol.admin for the bounds): it is read only while
    its answers are written (write buffer limit 0: any unsent byte pauses reading), closed
    when idle for ``admin.idle_timeout``, and refused beyond ``admin.max_connections``."""

    def __init__(self, app: AdminApp, config: AdminConfig, gate: AdmissionGate) -> None:
        self.http = AdminConnection(app)
        self.config = config
        self.gate = gate
        self.admitted = False
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop: no subclass
        if not self.gate.admit():
            transport.abort()
            return
        self.admitted = True
        transport.set_write_buffer_limits(high=0)
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.config.idle_timeout, self.transport.abort)

    def _answer(self, out: bytes, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        while True:
            if out:
                transport.write(out)  # may call pause_writing at once
            if close:
                transport.close()
                return
            if not out or self.paused:
                return
            out, close = self.http.answer_next()

    def data_received(self, data: bytes) -> None:
        self._touch()
        self._answer(*self.http.receive(data))

    def eof_received(self) -> bool:
        self._answer(*self.http.receive(b""))
        return True  # answers to requests already received may still be written

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None or self.transport.is_closing():
            return
        self._touch()
        self.transport.resume_reading()
        self._answer(*self.http.answer_next())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.admitted:
            self.admitted = False
            self.gate.release()


class _Server:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: Core,
        config: Config | None,
        log: AccessLog | None,
    ) -> None:
        self.loop = loop
        self.core = core
        self.conns: dict[int, _Connection] = {}
        self.pending: dict[int, list[bytes]] = {}
        self.next_id = 1
        self.flush_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.limiter: AsyncioRedisRateLimiter | None = None
        self.tls = TlsContexts(config)
        self.dispatcher = Dispatcher(
            core,
            clock=loop.time,
            execute=self.execute,
            arm_timer=self.arm_timer,
            access_log=log,
            config=config,
            write=self.queue_write,
        )

    # -- instructions ---------------------------------------------------------------------

    def queue_write(self, conn: int, data: bytes) -> None:
        """Writes are coalesced per connection and flushed once per loop iteration."""
        chunks = self.pending.get(conn)
        if chunks is None:
            self.pending[conn] = [data]
        else:
            chunks.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def execute(self, instruction: Instruction) -> None:
        match instruction:
            case Write(conn, data):
                self.queue_write(conn, data)
            case ReadDisable(conn):
                proto = self.conns.get(conn)
                if proto is not None:
                    proto.read_disabled = True
                    if proto.transport is not None and not proto.transport.is_closing():
                        proto.transport.pause_reading()
            case ReadEnable(conn):
                proto = self.conns.get(conn)
                if proto is not None:
                    proto.read_disabled = False
                    if proto.transport is not None and not proto.transport.is_closing():
                        proto.transport.resume_reading()
            case OpenUpstream(conn, host, port, tls):
                proto = _Connection(self, conn, None, half_close=tls is None)
                self.conns[conn] = proto
                proto.connect_task = self.spawn(self.connect(proto, host, port, tls))
            case CloseConnection(conn, flush):
                self.close_connection(conn, flush)
            case ExternalCall(call, kind, payload):
                if kind == "global_ratelimit" and self.limiter is not None:
                    self.spawn(self.rate_limit(call, payload))
                else:
                    self.dispatcher.complete_call(call, error=f"no handler for {kind!r} calls")
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
                self.dispatcher.feed(WriteBufferGrew(conn, size))

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
                    ssl=self.tls.upstream(tls),
                    server_hostname=server_hostname(tls, host),
                )
        except (OSError, ValueError) as exc:  # ValueError: ssl.CertificateError, TlsError
            assert proto.conn is not None
            if self.conns.get(proto.conn) is proto:
                del self.conns[proto.conn]
                self.pending.pop(proto.conn, None)
                self.dispatcher.feed(UpstreamConnectFailed(proto.conn, str(exc)))

    async def rate_limit(self, call: int, payload: Any) -> None:
        assert self.limiter is not None
        try:
            allowed = await self.limiter.check(payload)
        except Exception as exc:  # Redis down, bad reply, bad payload: the core decides
            self.dispatcher.complete_call(call, error=str(exc) or type(exc).__name__)
        else:
            self.dispatcher.complete_call(call, allowed)

    # -- the one timer --------------------------------------------------------------------

    def arm_timer(self, deadline: float | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self.dispatcher.timer_fired, deadline)


class Handle(ServerInfo):
    """A running proxy inside the caller's event loop."""

    def __init__(self, server: _Server, reuse_port: bool) -> None:
        super().__init__()
        self._server = server
        self._listeners: dict[str, asyncio.Server | _TlsListener] = {}
        self._binding: dict[str, socket.socket] = {}  # added by a reload, not yet accepting
        self._admin: asyncio.Server | None = None
        self._closed = False
        self._reuse_port = reuse_port

    @property
    def proxy(self) -> Core:
        return self._server.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self._server.dispatcher

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain). Binding happens
        first: if a listener cannot be bound this raises and nothing changes."""
        if self._closed:
            raise RuntimeError("reload while draining or closed")
        tls = TlsContexts(config)  # reads the certificate files again (raises if one is bad)
        changes = bind_and_reload(self._server.dispatcher, config, self._reuse_port)
        self._server.tls = tls
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
        server = self._server
        listener: asyncio.Server | _TlsListener
        try:
            if server.tls.listener(name) is not None:
                listener = _TlsListener(server, name, sock)
            else:
                listener = await server.loop.create_server(
                    lambda: _Connection(server, None, name), sock=sock, backlog=1024
                )
        except BaseException:
            sock.close()
            raise
        if self._closed or server.dispatcher.draining or self._binding.get(name) is not sock:
            listener.close()  # closed, draining, or removed or moved again meanwhile
        else:
            del self._binding[name]
            self._listeners[name] = listener

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout``, then close."""
        for listener in self._listeners.values():
            listener.close()
        dispatcher = self._server.dispatcher
        done = asyncio.Event()
        dispatcher.on_drained = done.set
        dispatcher.start_drain()
        if not dispatcher.drained:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        await self.close()

    async def close(self) -> None:
        """Close listeners and every connection now."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        for listener in self._listeners.values():
            listener.close()
        if self._admin is not None:
            self._admin.close()
        server.dispatcher.draining = True
        if server.timer is not None:
            server.timer.cancel()
        for conn in list(server.conns):
            server.close_connection(conn, flush=False)
        for task in list(server.tasks):
            task.cancel()
        if server.tasks:
            await asyncio.gather(*server.tasks, return_exceptions=True)
        if server.limiter is not None:
            await server.limiter.aclose()
        for listener in self._listeners.values():
            await listener.wait_closed()
        if self._admin is not None:
            await self._admin.wait_closed()
        server.dispatcher.close_logs()
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
    cfg = resolve_config(config)
    loop = asyncio.get_running_loop()
    core = proxy if proxy is not None else build_core(cfg, loop.time())
    access_log = AccessLog(cfg.access_log, cfg.access_log_metadata) if cfg.access_log else None
    server = _Server(loop, core, cfg, access_log)
    redis = global_ratelimit_redis(cfg)
    if redis is not None:
        server.limiter = AsyncioRedisRateLimiter.from_config(redis)
    handle = Handle(server, reuse_port)
    try:
        for listener in cfg.listeners:
            name = listener.name
            if listener.tls is not None:
                sock = bind_socket(listener.host, listener.port, reuse_port)
                handle._listeners[name] = _TlsListener(server, name, sock)
                handle.addresses[name] = bound_address(sock.getsockname())
                continue
            srv = await loop.create_server(
                lambda name=name: _Connection(server, None, name),
                listener.host,
                listener.port,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
            handle._listeners[name] = srv
            handle.addresses[name] = bound_address(srv.sockets[0].getsockname())
        if admin and cfg.admin is not None:
            app = server.dispatcher.admin_app()
            admin_config, gate = cfg.admin, AdmissionGate(cfg.admin.max_connections)
            handle._admin = await loop.create_server(
                lambda: _AdminProtocol(app, admin_config, gate),
                cfg.admin.host,
                cfg.admin.port,
                reuse_port=None,
            )
            handle.admin_address = bound_address(handle._admin.sockets[0].getsockname())
    except BaseException:
        await handle.close()
        raise
    server.dispatcher.apply([])  # arm the timer for anything the core scheduled at start
    return handle

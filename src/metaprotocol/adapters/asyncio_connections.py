"""The asyncio adapter's connections (see metaprotocol.adapters.asyncio): the transport
callbacks that become events, and the TLS listener that hands handshaken clients to them.
What they need of the server is ``Server``; the server carries out the instructions."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from metaprotocol.adapters.binding import peer_text, set_nodelay
from metaprotocol.adapters.dispatcher import HIGH_WATERMARK, LOW_WATERMARK, Dispatcher
from metaprotocol.adapters.serving import Serving
from metaprotocol.core import events as ev
from metaprotocol.tls import HANDSHAKE_TIMEOUT, count_handshake_error

__all__ = ["Connection", "Server", "Timer", "TlsListener"]


class Server(Protocol):
    """What a connection needs of the asyncio adapter's server."""

    loop: asyncio.AbstractEventLoop
    serving: Serving

    def adopt(self, connection: Connection) -> int:
        """Number an accepted connection and enter it in the connection table."""
        ...

    def forget(self, connection: Connection) -> bool:
        """Remove a lost connection from the tables, if it is still there (True)."""
        ...

    def connected(self, conn: int) -> None:
        """An upstream connected: write what was queued for it."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...


class Timer:
    """One dispatcher's timer: a ``call_at`` handle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[float], None]) -> None:
        self.loop, self.fire = loop, fire
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, deadline: float | None) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if deadline is not None:
            self.handle = self.loop.call_at(deadline, self.fire, deadline)


class Connection(asyncio.Protocol):
    """One downstream, upstream or admin socket; ``conn`` is None until it is accepted
    (``listener`` is set for those that are accepted)."""

    def __init__(
        self,
        server: Server,
        dispatcher: Dispatcher,
        conn: int | None,
        listener: str | None,
        half_close: bool = True,
    ) -> None:
        self.server = server
        self.dispatcher = dispatcher  # the proxy's, or the admin endpoint's
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
        set_nodelay(transport.get_extra_info("socket"))
        transport.set_write_buffer_limits(high=HIGH_WATERMARK, low=LOW_WATERMARK)
        if self.listener is not None:
            self.conn = conn = self.server.adopt(self)
            peer = peer_text(transport.get_extra_info("peername"))
            self.dispatcher.feed(ev.Accepted(conn, self.listener, peer))
        else:
            assert self.conn is not None
            if self.read_disabled:
                transport.pause_reading()
            self.dispatcher.feed(ev.UpstreamConnected(self.conn))
            self.server.connected(self.conn)

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
        if self.conn is None:
            return
        self.server.forget(self)
        if not self.closed_by_us:
            self.dispatcher.feed(ev.Closed(self.conn, "" if exc is None else str(exc)))


class TlsListener:
    """A TLS listener: accepts on its socket itself and hands each client to
    ``connect_accepted_socket`` with the listener's current context, so the loop's TLS does
    the handshake, the core hears of the client (``connection_made``) only once that
    succeeded, and a failure is an exception here, counted. (``start_tls`` on a transport
    from ``create_server`` cannot be used: uvloop starts reading right after
    ``connection_made``, and the ClientHello would reach the plaintext protocol.)"""

    def __init__(self, server: Server, name: str, sock: socket.socket) -> None:
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
        server, serving = self.server, self.server.serving
        ctx = serving.tls.listener(self.name)
        if ctx is None:  # a reload cannot turn TLS off at the same address; be safe anyway
            client.close()
            return
        try:
            await server.loop.connect_accepted_socket(
                lambda: Connection(server, serving.dispatcher, None, self.name, half_close=False),
                client,
                ssl=ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError, a reset, the handshake timeout
            count_handshake_error(serving.core.stats, self.name, exc)
            client.close()

    def close(self) -> None:
        """Stop accepting, and drop clients still handshaking (the core never saw them)."""
        self.task.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        pass

"""The blocking adapter's connections (see metaprotocol.adapters.blocking): the table of
non-blocking sockets under the loop's selector, what each is polled for, and what its
readiness becomes (reads, writes, connects and TLS handshakes as events). The loop owns the
selector, the listeners and the timers, and hands instructions here."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import time

from metaprotocol.adapters.binding import set_nodelay
from metaprotocol.adapters.dispatcher import CLOSE_LINGER, READ_CHUNK, Dispatcher, OutBuffer
from metaprotocol.adapters.serving import Serving
from metaprotocol.core import events as ev
from metaprotocol.core.config import ClusterTls
from metaprotocol.tls import HANDSHAKE_TIMEOUT, TlsError, count_handshake_error, server_hostname

__all__ = ["Connection", "Connections"]

_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Connection:
    """One downstream, upstream or admin socket."""

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


class Connections:
    """Every open connection of one loop, on the loop's selector."""

    def __init__(self, sel: selectors.BaseSelector, serving: Serving) -> None:
        self.sel = sel
        self.serving = serving
        self.dispatcher = serving.dispatcher
        self.conns: dict[int, Connection] = {}
        self.closing: set[Connection] = set()
        self.handshakes: set[Connection] = set()  # TLS clients not yet handshaken
        self.upstream_tls: dict[Connection, tuple[ssl.SSLContext, str]] = {}  # connecting
        self.dirty: set[Connection] = set()
        self.next_id = 1

    # -- instructions ---------------------------------------------------------------------

    def write(self, conn: int, data: bytes) -> None:
        c = self.conns.get(conn)
        if c is not None:
            if c.out.append(data):
                c.dispatcher.feed(ev.WriteBufferHigh(conn))
            if c.out.above:
                c.dispatcher.feed(ev.WriteBufferGrew(conn, len(c.out.data)))
            self.dirty.add(c)

    def set_readable(self, conn: int, readable: bool) -> None:
        if (c := self.conns.get(conn)) is not None:
            c.readable = readable
            self.update(c)

    def close(self, conn: int, flush: bool) -> None:
        if (c := self.conns.pop(conn, None)) is not None:
            if flush and c.out.data and not c.connecting:
                c.closing_until = time.monotonic() + CLOSE_LINGER
                c.readable = False
                self.closing.add(c)
                self.dirty.add(c)
            else:
                self.drop(c)

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
        set_nodelay(sock)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self.dispatcher.feed(ev.UpstreamConnectFailed(conn, os.strerror(err)))
            return
        c = self.conns[conn] = Connection(conn, sock, self.dispatcher)
        c.connecting = True
        if ctx is not None and tls is not None:
            self.upstream_tls[c] = (ctx, server_hostname(tls, host))
        self.update(c)

    # -- TLS handshakes -------------------------------------------------------------------

    def start_handshake(self, c: Connection, ctx: ssl.SSLContext, hostname: str | None) -> None:
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

    def step_handshake(self, c: Connection) -> None:
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

    def handshake_failed(self, c: Connection, reason: object) -> None:
        """A client's failed handshake is counted; an upstream's is a connect failure."""
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
        self.drop(c)
        if c.listener is not None:
            count_handshake_error(self.serving.core.stats, c.listener, reason)
        else:
            self.dispatcher.feed(ev.UpstreamConnectFailed(c.conn, str(reason)))

    def update(self, c: Connection) -> None:
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

    def drop(self, c: Connection) -> None:
        if c.mask:
            self.sel.unregister(c.sock)
            c.mask = 0
        c.sock.close()
        self.closing.discard(c)
        self.dirty.discard(c)
        self.handshakes.discard(c)
        self.upstream_tls.pop(c, None)

    def lost(self, c: Connection, error: str) -> None:
        if self.conns.get(c.conn) is c:
            del self.conns[c.conn]
            self.drop(c)
            c.dispatcher.feed(ev.Closed(c.conn, error))
        else:
            self.drop(c)

    # -- socket readiness -----------------------------------------------------------------

    def on_ready(self, c: Connection, mask: int) -> None:
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

    def accept(self, sock: socket.socket, peer: str, listener: str | None) -> None:
        """A socket accepted on ``listener`` (None: the admin listener)."""
        sock.setblocking(False)
        set_nodelay(sock)
        admin = listener is None and self.serving.admin
        c = self.conns[self.next_id] = Connection(self.next_id, sock, admin or self.dispatcher)
        self.next_id += 1
        ctx = None if listener is None else self.serving.tls.listener(listener)
        if ctx is None:
            self.update(c)
            c.dispatcher.feed(ev.Accepted(c.conn, listener or "admin", peer))
            return
        c.listener, c.peer = listener, peer
        c.handshake_until = time.monotonic() + HANDSHAKE_TIMEOUT
        self.handshakes.add(c)
        self.start_handshake(c, ctx, None)

    def wakes(self) -> list[float]:
        """When lingering closes and TLS handshakes are given up on."""
        wakes = [c.closing_until for c in self.closing if c.closing_until is not None]
        return wakes + [c.handshake_until for c in self.handshakes]

    def expire(self, now: float) -> None:
        for c in [c for c in self.closing if (c.closing_until or now) <= now]:
            self.drop(c)
        for c in [c for c in self.handshakes if c.handshake_until <= now]:
            self.handshake_failed(c, "handshake timed out")

    def close_all(self) -> None:
        for c in [*self.conns.values(), *self.closing, *self.handshakes]:
            self.drop(c)
        self.conns.clear()

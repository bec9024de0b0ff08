"""The anyio adapter's plain TCP connections under trio, driven on the socket itself.

anyio's stream over a trio socket costs, per message read, a resource guard, trio's
``recv`` (a failed ``recv``, a wait, the ``recv`` again, then a scheduler round trip of its
own), and per write burst a new writer task and the same layers on the send side. Here the
reader waits with ``trio.lowlevel.wait_readable`` and reads once (one scheduler pass, one
``recv`` per message, as asyncio's selector loop does), and a write is sent at once with a
non-blocking ``send`` (as asyncio's transports do); only what the kernel does not take waits
in the out buffer for a writer task (``wait_writable``). The anyio stream stays the
connection's owner (connect, accept, close); TLS connections keep the stream path.
Only used under trio: ``anyio_connections.Streams`` decides (``socket_of``).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import anyio.abc
import trio
from anyio.abc import SocketAttribute

from metaprotocol.adapters.dispatcher import CLOSE_LINGER, READ_CHUNK
from metaprotocol.core import events as ev

if TYPE_CHECKING:
    from metaprotocol.adapters.anyio_connections import Connection

__all__ = ["pump", "send_now", "socket_of", "write_loop"]

SEND_CHUNK = 1024 * 1024  # the most one send() is offered out of a connection's out buffer


def socket_of(stream: Any) -> socket.socket | None:
    """The socket under ``stream`` when it is a plain anyio socket stream (not TLS)."""
    if isinstance(stream, anyio.abc.SocketStream):
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        return sock
    return None


def _failed(c: Connection, exc: BaseException) -> None:
    """A read or send failed: the connection's task ends with this error (``Closed``)."""
    if not c.error:
        c.error = str(exc) or type(exc).__name__
    c.cancel()


def send_now(c: Connection, sock: socket.socket, data: bytes) -> bytes:
    """Send what the kernel takes of ``data`` now; return the rest ("" when all was sent,
    or the connection failed: its task is cancelled and reports the error)."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        return data
    except OSError as exc:
        _failed(c, exc)
        return b""
    return data[sent:] if sent < len(data) else b""


async def pump(c: Connection, sock: socket.socket) -> None:
    """Read until the peer's end of stream, then wait (the writer and the core go on);
    or until an error. The anyio stream path's ``pump``, on the socket."""
    feed = c.dispatcher.feed
    wait_readable = trio.lowlevel.wait_readable
    while True:
        while not c.readable:
            c.read_wakeup = anyio.Event()
            await c.read_wakeup.wait()
        await wait_readable(sock)  # the scheduling point of every message
        try:
            data = sock.recv(READ_CHUNK)
        except BlockingIOError:  # readiness reported, but nothing to read after all
            continue
        except OSError as exc:
            _failed(c, exc)
            return
        if not data:
            if not c.closed_by_us:
                feed(ev.EofReceived(c.conn))
            await trio.sleep_forever()  # keep writing: the core decides when to close
        if not c.closed_by_us:
            feed(ev.DataReceived(c.conn, data))


async def write_loop(c: Connection, sock: socket.socket) -> None:
    """Send what is buffered as the socket takes it, then end (``Streams.kick_writer``
    starts a new one when needed); a closing connection whose peer does not read for
    ``CLOSE_LINGER`` is given up."""
    out = c.out
    try:
        with trio.CancelScope() as scope:
            c.write_scope = scope
            while out.data:
                # A bounded offer: the kernel copies what it takes, never the whole buffer.
                pending = memoryview(out.data)[:SEND_CHUNK]
                try:
                    sent = sock.send(pending)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    _failed(c, exc)
                    return
                finally:
                    pending.release()  # the buffer cannot be resized while a view exists
                if sent == 0:
                    with trio.move_on_after(CLOSE_LINGER if c.closing else float("inf")):
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    c.cancel()  # a closing peer that does not read: give up
                    return
                if out.consumed(sent) and not c.closed_by_us:
                    c.dispatcher.feed(ev.WriteBufferLow(c.conn))
            if c.closing:  # closing and flushed
                c.cancel()
    finally:
        c.write_scope = None
        c.writing = False

"""The asyncio adapter's listeners: accepting on a bound socket, and stopping one a reload
removes or moves after taking the clients waiting in its backlog (closing would reset
them); those are served like any accepted client, over TLS on a TLS listener."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

from metaprotocol.adapters.asyncio_connections import Connection, Server, TlsListener
from metaprotocol.adapters.binding import take_backlog
from metaprotocol.adapters.dispatcher import Dispatcher

__all__ = ["Listener", "listen", "retire"]

Listener = asyncio.Server | TlsListener


async def listen(
    server: Server, name: str, sock: socket.socket, dispatcher: Dispatcher | None = None
) -> Listener:
    """Accept on a bound socket, feeding ``dispatcher`` (the proxy's by default); a TLS
    listener accepts itself (see ``TlsListener``)."""
    if dispatcher is None and server.serving.tls.listener(name) is not None:
        return TlsListener(server, name, sock)
    feeds = dispatcher or server.serving.dispatcher
    return await server.loop.create_server(
        lambda: Connection(server, feeds, None, name), sock=sock, backlog=1024
    )


def retire(server: Server, name: str, listener: Listener, sock: socket.socket) -> None:
    """Stop accepting on ``listener`` (bound to ``sock``), serving the proxy clients
    waiting in its backlog first."""
    waiting = [client for client, _ in take_backlog(sock)]
    listener.close()
    for client in waiting:
        if isinstance(listener, TlsListener):
            _spawn(server, client, listener.handshake(client))
        else:
            _spawn(server, client, _adopt(server, name, client))


def _spawn(server: Server, client: socket.socket, coro: Coroutine[Any, Any, None]) -> None:
    started: list[bool] = []

    async def run() -> None:
        started.append(True)
        await coro

    def done(task: asyncio.Task[None]) -> None:
        if not started:  # cancelled (a close) before it ran: nothing owns the socket
            coro.close()
            client.close()

    server.spawn(run()).add_done_callback(done)


async def _adopt(server: Server, name: str, client: socket.socket) -> None:
    try:
        await server.loop.connect_accepted_socket(
            lambda: Connection(server, server.serving.dispatcher, None, name), client
        )
    except OSError:  # reset while waiting
        client.close()

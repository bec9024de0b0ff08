"""The anyio adapter's accept loop: accepting on a listener until it stops, then serving
the clients still waiting in its backlog (closing would reset them)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from metaprotocol.adapters.binding import take_backlog

__all__ = ["listen"]


async def listen(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    handler: Callable[[anyio.abc.SocketStream], Any],
    scope: anyio.CancelScope,
) -> None:
    """Accept until ``scope`` is cancelled (drain) or the listener is closed; ``handler``
    starts each connection's task in the server's task group, so cancelling ``scope``
    stops accepting and nothing else."""
    waiting: list[socket.socket] = []
    with scope:
        try:
            async with listener:
                subs: list[Any] = list(getattr(listener, "listeners", None) or [listener])
                try:
                    if len(subs) == 1:
                        await _accept_loop(subs[0], handler)
                    else:  # a listener per address family
                        async with anyio.create_task_group() as tg:
                            for sub in subs:
                                tg.start_soon(_accept_loop, sub, handler)
                finally:  # take what waits in the backlog before closing resets it
                    waiting = [
                        sock
                        for sub in subs
                        for sock, _ in take_backlog(sub.extra(SocketAttribute.raw_socket))
                    ]
        except anyio.ClosedResourceError:  # Handle.close closed it under us
            pass
    with anyio.CancelScope(shield=True):  # served like any client (the listener is closed)
        for index, sock in enumerate(waiting):
            try:
                handler(await anyio.abc.SocketStream.from_socket(sock))
            except BaseException:
                for rest in waiting[index:]:
                    rest.close()
                raise


async def _accept_loop(listener: Any, handler: Callable[[anyio.abc.SocketStream], Any]) -> None:
    while True:
        handler(await listener.accept())

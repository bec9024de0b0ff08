"""TLS for the anyio adapter (metaprotocol.tls): anyio's ``TLSStream`` over a socket stream
whose sends take turns, handshaken as a server (a TLS listener's client, within
``HANDSHAKE_TIMEOUT``) or as a client (an upstream: the core's connect_timeout bounds it)."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from metaprotocol.core.config import ClusterTls
from metaprotocol.tls import HANDSHAKE_TIMEOUT, server_hostname

__all__ = ["HANDSHAKE_FAILED", "TurnTakingSends", "wrap_client", "wrap_server"]

HANDSHAKE_FAILED = (anyio.BrokenResourceError, anyio.EndOfStream, OSError, TimeoutError)
"""What a failed handshake raises."""


class TurnTakingSends(anyio.abc.ByteStream):
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


async def wrap_server(stream: anyio.abc.SocketStream, ctx: ssl.SSLContext) -> TLSStream:
    """A client's stream, handshaken as the server; raises one of ``HANDSHAKE_FAILED``."""
    with anyio.fail_after(HANDSHAKE_TIMEOUT):
        return await TLSStream.wrap(
            TurnTakingSends(stream), server_side=True, ssl_context=ctx, standard_compatible=False
        )


async def wrap_client(
    stream: anyio.abc.SocketStream, ctx: ssl.SSLContext, tls: ClusterTls, host: str
) -> TLSStream:
    """An upstream's stream, handshaken as the client of ``host``."""
    return await TLSStream.wrap(
        TurnTakingSends(stream),
        hostname=server_hostname(tls, host),
        ssl_context=ctx,
        standard_compatible=False,
    )

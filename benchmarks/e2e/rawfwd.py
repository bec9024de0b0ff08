"""A minimal raw TCP byte forwarder (asyncio or uvloop): the benchmark's Python baseline.

``python benchmarks/e2e/rawfwd.py --listen 127.0.0.1:7000 --upstream 127.0.0.1:6379
[--loop uvloop]``. One upstream connection per downstream connection, bytes copied as
they come, TCP_NODELAY, and backpressure by pausing the other side's reads. No parsing:
it is the floor that any protocol-aware Python proxy is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import cast

__all__ = ["Pipe", "main"]


class Pipe(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the other side's protocol."""

    def __init__(self, peer: Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # downstream bytes that arrived before upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        if self.peer is None:  # downstream: connect upstream, then flush what arrived meanwhile
            asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Pipe(self), *UPSTREAM)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        self.peer = up
        assert up.transport is not None
        for chunk in self.pending:
            up.transport.write(chunk)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


UPSTREAM: tuple[str, int] = ("127.0.0.1", 0)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Pipe, host, port, backlog=4096)
    async with server:
        # Not server.serve_forever(): under rloop 0.5 it stops the listener (connections
        # are refused from then on). The proxy's asyncio adapter does not call it either.
        await loop.create_future()


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "rloop"), default="asyncio")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.rpartition(":")
    UPSTREAM = (up_host, int(up_port))
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(host, int(port)))
    elif args.loop == "rloop":
        import rloop

        with asyncio.Runner(loop_factory=rloop.new_event_loop) as runner:
            runner.run(_serve(host, int(port)))
    else:
        asyncio.run(_serve(host, int(port)))


if __name__ == "__main__":
    main()

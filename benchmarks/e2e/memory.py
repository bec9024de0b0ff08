"""Memory cost of a proxy: RSS per idle downstream connection and per in-flight request.

Idle connections: open N connections to a freshly started proxy's Redis listener, send one
PING on each and wait for every PONG (so each connection went through accept, the codec and
the upstream path), then compare the proxy group's RSS with the RSS before. In-flight
requests: the proxy's upstream is a black hole in this process that reads and never answers;
after N idle connections are open, one GET is sent on each, and RSS is compared again once
the black hole stops receiving bytes. Kernel socket buffers are not in RSS, so both numbers
are the proxy's own user-space cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from .procs import rss_kib

__all__ = ["Blackhole", "MemoryResult", "idle_connections", "inflight_requests"]

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"
BATCH = 250  # connections opened concurrently


@dataclass(frozen=True)
class MemoryResult:
    target: str
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    note: str = ""

    @property
    def bytes_per_item(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) * 1024 / self.connections


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.want = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.want and len(self.received) >= self.want and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.want:  # someone awaits the answer: the proxy closed before giving it
            self.done.set_exception(ConnectionError("closed by the proxy"))
        else:
            self.done.set_result(None)


async def _open(port: int, n: int) -> list[_Client]:
    loop = asyncio.get_running_loop()
    clients: list[_Client] = []
    for start in range(0, n, BATCH):
        batch = [
            loop.create_connection(_Client, "127.0.0.1", port) for _ in range(min(BATCH, n - start))
        ]
        clients.extend(proto for _, proto in await asyncio.gather(*batch))
    return clients


def _close(clients: list[_Client]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


async def _settle(pgid: int, seconds: float = 0.4) -> int:
    await asyncio.sleep(seconds)
    return rss_kib(pgid)


async def _idle(name: str, port: int, pgid: int, n: int) -> MemoryResult:
    warm = await _open(port, 1)  # first connection opens the upstream side too
    warm[0].want = len(PONG)
    assert warm[0].transport is not None
    warm[0].transport.write(PING)
    await asyncio.wait_for(warm[0].done, 10)
    before = await _settle(pgid)
    clients = await _open(port, n)
    for client in clients:
        client.want = len(PONG)
        assert client.transport is not None
        client.transport.write(PING)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 60)
    after = await _settle(pgid)
    _close(clients + warm)
    await asyncio.sleep(0.2)
    return MemoryResult(name, n, before, after, "idle after one PING")


def idle_connections(name: str, port: int, pgid: int, n: int) -> MemoryResult:
    """RSS growth of process group ``pgid`` per idle downstream connection on ``port``."""
    return asyncio.run(_idle(name, port, pgid, n))


class Blackhole(asyncio.Protocol):
    """An upstream that reads everything and answers nothing; counts bytes received."""

    received = 0

    def data_received(self, data: bytes) -> None:
        Blackhole.received += len(data)


async def _inflight(
    name: str, start_proxy: Callable[[int], tuple[int, int]], n: int
) -> tuple[MemoryResult, MemoryResult]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Blackhole, "127.0.0.1", 0, backlog=4096)
    hole_port = server.sockets[0].getsockname()[1]
    port, pgid = await asyncio.to_thread(start_proxy, hole_port)
    try:
        base = await _settle(pgid)
        clients = await _open(port, n)
        idle = await _settle(pgid, 1.0)
        Blackhole.received = 0
        requests = [b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k) for k in _keys(n)]
        for client, request in zip(clients, requests, strict=True):
            assert client.transport is not None
            client.transport.write(request)
        want = sum(len(r) for r in requests)
        last, quiet_since = -1, time.monotonic()
        while Blackhole.received < want and time.monotonic() - quiet_since < 2.0:
            await asyncio.sleep(0.1)
            if Blackhole.received != last:
                last, quiet_since = Blackhole.received, time.monotonic()
        busy = await _settle(pgid, 0.5)
        forwarded = Blackhole.received * n // want
        _close(clients)
    finally:
        server.close()
    never_used = MemoryResult(name, n, base, idle, "idle, never used")
    inflight = MemoryResult(name, n, idle, busy, f"in flight ({forwarded} reached the upstream)")
    return never_used, inflight


def _keys(n: int) -> list[bytes]:
    return [b"key:%08d" % i for i in range(n)]


def inflight_requests(
    name: str, start_proxy: Callable[[int], tuple[int, int]], n: int
) -> tuple[MemoryResult, MemoryResult]:
    """(per never-used connection, per in-flight request) for a proxy whose upstream is a
    black hole; ``start_proxy(upstream_port) -> (listen_port, pgid)`` starts it."""
    return asyncio.run(_inflight(name, start_proxy, n))

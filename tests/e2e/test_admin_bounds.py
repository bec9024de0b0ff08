"""The admin endpoint stays bounded whatever a client does, on every adapter.

A client pipelining 200,000 requests without reading the answers is no longer read once
its unread answers fill the socket buffers (the proxy's memory stays flat and the data
plane keeps serving); idle admin connections are closed; connections beyond
``admin.max_connections`` are refused; a request declaring a body of 10**15 bytes is
answered 413 at once, from its head.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from metaprotocol.configfile import parse_config
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import DEADLINE

PIPELINED = 200_000
REQUEST = b"GET /config_dump HTTP/1.1\r\nHost: admin\r\n\r\n"


def _config(redis_port: int, **admin: Any) -> Any:
    return parse_config(
        {
            "admin": {"address": "127.0.0.1:0", **admin},
            "listeners": [
                {"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
                 "routes": [{"name": "all", "route": {"cluster": "main"}}]}
            ],
            "clusters": [{"name": "main", "endpoints": [f"127.0.0.1:{redis_port}"]}],
        }
    )  # fmt: skip


@pytest.fixture
def proxied(adapter: str, redis_port: int) -> Iterator[RunningProxy]:
    with start_proxy(_config(redis_port, idle_timeout="30s"), adapter) as running:
        yield running


def _rss() -> int:
    """This process's resident set size in bytes (the proxy runs in a thread of it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _admin(running: RunningProxy) -> socket.socket:
    assert running.admin_address is not None
    return socket.create_connection(running.admin_address, timeout=DEADLINE)


def _get(running: RunningProxy, path: str) -> bytes:
    with _admin(running) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode())
        return _read_to_close(sock)


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything until the proxy closes (a reset counts as a close)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _flood(sock: socket.socket, count: int, stall: float) -> int:
    """Send ``count`` pipelined requests, never reading; stop early once the proxy has
    taken nothing for ``stall`` seconds (it stopped reading). Returns the requests sent."""
    batch = REQUEST * 1000
    sock.setblocking(False)
    sent = 0
    pending = b""
    while sent < count * len(REQUEST):
        if not pending:
            pending = batch[: count * len(REQUEST) - sent]
        _, writable, _ = select.select([], [sock], [], stall)
        if not writable:
            break
        try:
            n = sock.send(pending)
        except BlockingIOError:
            continue
        sent += n
        pending = pending[n:]
    return sent // len(REQUEST)


def test_a_non_reading_pipeliner_is_held_and_the_rest_keeps_serving(
    proxied: RunningProxy, adapter: str
) -> None:
    client = redis.Redis(host="127.0.0.1", port=proxied.ports["redis"], socket_timeout=DEADLINE)
    assert client.ping() is True
    before = _rss()
    flooder = _admin(proxied)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sent = _flood(flooder, PIPELINED, stall=2.0)
        # It was stopped: its unread answers filled the buffers and it is no longer read.
        assert sent < PIPELINED
        grown = _rss() - before
        # Each answer is a config dump of about 1 KiB: answering the whole flood would
        # hold 200 MB; what is held is bounded by the socket buffers.
        assert grown < 64 * 1024 * 1024, f"RSS grew by {grown} bytes ({sent} requests sent)"
        # The data plane and the admin endpoint keep serving meanwhile.
        key = f"admin-flood:{adapter}"
        assert client.set(key, "v") is True and client.get(key) == b"v"
        assert _get(proxied, "/ready").startswith(b"HTTP/1.1 200 ")
    finally:
        flooder.close()
        client.close()


def test_a_request_declaring_a_huge_body_is_answered_413_at_once(proxied: RunningProxy) -> None:
    with _admin(proxied) as sock:
        sock.sendall(
            b"POST /config_dump HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n"
        )
        answer = _read_to_close(sock)  # closed after the answer: the body is never read
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_idle_admin_connections_are_closed(adapter: str, redis_port: int) -> None:
    with start_proxy(_config(redis_port, idle_timeout="300ms"), adapter) as running:
        with _admin(running) as idle, _admin(running) as half:
            half.sendall(b"GET /ready HTTP/1.1\r\n")  # a request that never ends
            started = time.monotonic()
            assert _read_to_close(idle) == b""
            assert _read_to_close(half) == b""
            assert time.monotonic() - started < DEADLINE
        # A connection that keeps asking is served throughout.
        assert _get(running, "/ready").startswith(b"HTTP/1.1 200 ")


def test_admin_connections_over_the_cap_are_refused(adapter: str, redis_port: int) -> None:
    with start_proxy(_config(redis_port, max_connections=2), adapter) as running:
        first, second = _admin(running), _admin(running)
        try:
            for sock in (first, second):  # both admitted and served
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            with _admin(running) as third:
                third.sendall(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
                assert _read_to_close(third) == b""  # closed without an answer
            first.close()
            # A slot is free again once a connection goes (the proxy sees the close soon).
            deadline = time.monotonic() + DEADLINE
            answer = _get(running, "/ready")
            while not answer and time.monotonic() < deadline:
                answer = _get(running, "/ready")
            assert answer.startswith(b"HTTP/1.1 200 ")
        finally:
            first.close()
            second.close()

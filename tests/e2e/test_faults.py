"""Faults end to end: upstreams that refuse, reset or stall; clients that vanish, read slowly
or send garbage. Every case checks the exact error reply the codec promises."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.dubbo_frames import read_frame, request_frame
from tests.e2e.servers import (
    DEADLINE,
    MiniServer,
    proxy_config,
    recv_exactly,
    recv_until_closed,
    refused_port,
    scrape_admin,
    wait_until,
)

DUBBO_REQUEST = request_frame("org.example.Svc", "1.0.0", "call", ["x"])
DUBBO_ID = struct.unpack("!q", DUBBO_REQUEST[4:12])[0]


@dataclass(frozen=True)
class Case:
    """One codec's request, a half response for it, and how to read the proxy's reply."""

    codec: str
    request: bytes
    half_response: bytes
    read_reply: Callable[[socket.socket], bytes]


def _read_http_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed; got {data!r}"
        data += chunk
    return data


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed; got {data!r}"
        data += chunk
    return data


def _read_dubbo(sock: socket.socket) -> bytes:
    flag, status, request_id, body = read_frame(sock)
    assert request_id == DUBBO_ID
    assert flag & 0x80 == 0  # a response
    return bytes([status]) + body


CASES = {
    "http1": Case(
        "http1",
        b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf",
        _read_http_head,
    ),
    "redis": Case("redis", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$100\r\nhalf", _read_line),
    "dubbo": Case(
        "dubbo",
        DUBBO_REQUEST,
        DUBBO_REQUEST[:2] + b"\x02\x14" + DUBBO_REQUEST[4:12] + struct.pack("!i", 100) + b"half",
        _read_dubbo,
    ),
}
# What each codec answers, per fault (docs/configuration.md "Error replies"; the codecs'
# error maps).
EXPECTED: dict[tuple[str, str], bytes] = {
    ("http1", "refused"): b"HTTP/1.1 502 ",
    ("http1", "reset"): b"HTTP/1.1 502 ",
    ("http1", "stall"): b"HTTP/1.1 504 ",
    ("redis", "refused"): b"-ERR upstream connect failure",
    ("redis", "reset"): b"-ERR upstream connection reset",
    ("redis", "stall"): b"-ERR upstream request timeout",
    ("dubbo", "refused"): bytes([80]),  # SERVER_ERROR
    ("dubbo", "reset"): bytes([80]),
    ("dubbo", "stall"): bytes([31]),  # SERVER_TIMEOUT
}


def _reset_after_half(case: Case) -> Callable[[socket.socket], None]:
    def behaviour(conn: socket.socket) -> None:
        data = b""
        while len(data) < len(case.request):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        conn.sendall(case.half_response)
        MiniServer.reset(conn)

    return behaviour


def _stall(conn: socket.socket) -> None:
    """Read and never answer, until the peer (or the test) closes."""
    while conn.recv(65536):
        pass


@contextlib.contextmanager
def _upstream(fault: str, case: Case) -> Iterator[int]:
    if fault == "refused":
        with refused_port() as port:
            yield port
        return
    behaviour = _reset_after_half(case) if fault == "reset" else _stall
    with MiniServer(behaviour) as server:
        yield server.port


@pytest.mark.parametrize("fault", ["refused", "reset", "stall"])
@pytest.mark.parametrize("codec", sorted(CASES))
def test_upstream_fault_gets_codec_error_reply(adapter: str, codec: str, fault: str) -> None:
    case = CASES[codec]
    with _upstream(fault, case) as port:
        routes = [{"name": "default", "route": {"cluster": "up", "timeout": "300ms"}}]
        with (
            start_proxy(proxy_config(codec, {"up": [port]}, routes), adapter) as running,
            socket.create_connection(("127.0.0.1", running.ports[codec]), DEADLINE) as sock,
        ):
            sock.sendall(case.request)
            reply = case.read_reply(sock)
            expected = EXPECTED[codec, fault]
            assert reply.startswith(expected), reply
            # No state left behind: the timed-out / failed request is gone from the core.
            wait_until(
                lambda: running.call(lambda: _request_count(running)) == 0,
                timeout=2.0,
                message="the core to forget the failed request",
            )


@pytest.mark.parametrize(
    ("codec", "request_bytes"),
    [
        ("http1", b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        ("redis", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
    ],
)
def test_error_replies_name_the_failure_not_the_address(
    adapter: str, codec: str, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused upstream connection: the client learns it was a connect failure; the OS
    error, which names the internal address, goes to the adapter's log only."""
    caplog.set_level(logging.WARNING, logger="metaprotocol")
    with (
        refused_port() as port,
        start_proxy(proxy_config(codec, {"up": [port]}), adapter) as running,
        socket.create_connection(("127.0.0.1", running.ports[codec]), DEADLINE) as sock,
    ):
        sock.sendall(request_bytes)
        reply = _read_http_head(sock) if codec == "http1" else _read_line(sock)
        if codec == "http1":
            reply += sock.recv(65536)  # the body: the reply is small and sent in one piece
    assert reply.startswith(EXPECTED[codec, "refused"]), reply
    assert b"connect failed" in reply, reply
    assert str(port).encode() not in reply and b"127.0.0.1" not in reply, reply
    assert b"Errno" not in reply and b"refused" not in reply.lower(), reply
    logged = [r.getMessage() for r in caplog.records if "connect failure" in r.getMessage()]
    assert any(f"127.0.0.1:{port}" in line for line in logged), logged


def _request_count(running: RunningProxy) -> int:
    """Requests the core still tracks (``Proxy.request_count``; call in the proxy's thread)."""
    proxy: Any = running.proxy  # the serving handle types it as the adapters' Core slice
    count: int = proxy.request_count()
    return count


def _active_requests(running: RunningProxy) -> float:
    assert running.admin_address is not None
    text = scrape_admin(running.admin_address)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "metaprotocol_active_requests":
                return float(sample.value)
    raise AssertionError(f"no active_requests gauge in {text!r}")


def test_client_disconnect_mid_request_leaves_no_state(adapter: str) -> None:
    arrived = threading.Event()

    def stall(conn: socket.socket) -> None:
        if conn.recv(65536):
            arrived.set()
        _stall(conn)

    with MiniServer(stall) as upstream:
        config = proxy_config("http1", {"up": [upstream.port]})
        with start_proxy(config, adapter) as running:
            # A request in flight upstream, then the client goes away.
            with socket.create_connection(("127.0.0.1", running.ports["http1"]), DEADLINE) as s:
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                assert arrived.wait(DEADLINE)
                assert _active_requests(running) == 1
            # Half a request, then the client goes away.
            with socket.create_connection(("127.0.0.1", running.ports["http1"]), DEADLINE) as s:
                s.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhal")
            wait_until(lambda: _active_requests(running) == 0, message="active_requests == 0")
            wait_until(
                lambda: running.call(lambda: _request_count(running)) == 0, message="no requests"
            )
            counts = running.call(lambda: running.proxy.stats.snapshot().counters)
            listener = (("listener", "http1"),)
            assert counts[("cx_destroy_remote_with_active_rq", listener)] >= 1
            wait_until(
                lambda: (
                    running.call(lambda: running.proxy.stats.snapshot().gauges).get(
                        ("downstream_cx_active", listener)
                    )
                    == 0
                ),
                message="downstream_cx_active == 0",
            )


def _redis_client_list(port: int) -> list[dict[str, str]]:
    client = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=DEADLINE)
    try:
        text = client.execute_command("CLIENT", "LIST")
    finally:
        client.close()
    raw = text.decode() if isinstance(text, bytes) else str(text)
    return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in raw.splitlines() if line]


# Three adapters are enough here: the flow-control path is shared dispatcher code, and moving
# 20 MB through the proxy is the slowest test in the suite.
@pytest.mark.parametrize("adapter", ["asyncio", "trio", "blocking"])
def test_slow_reader_pauses_upstream(adapter: str, redis_port: int) -> None:
    value = os.urandom(100_000)
    count = 200  # 20 MB of replies in all
    seed = redis.Redis(host="127.0.0.1", port=redis_port, protocol=2)
    try:
        seed.set(f"big:{adapter}", value)
    finally:
        seed.close()
    with start_proxy(proxy_config("redis", {"main": [redis_port]}), adapter) as running:
        sock = socket.create_connection(("127.0.0.1", running.ports["redis"]), DEADLINE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            key = f"big:{adapter}".encode()
            get = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
            sock.sendall(get * count)  # and do not read

            def held_back_by_redis() -> int:
                # The proxy stopped reading its upstream: the replies pile up in
                # redis-server's output buffer for that connection, not in the proxy.
                return max((int(c.get("omem", "0")) for c in _redis_client_list(redis_port)),
                           default=0)  # fmt: skip

            held = wait_until(
                lambda: (h := held_back_by_redis()) > 5_000_000 and h,
                message="redis-server to hold > 5 MB of unread replies",
            )
            assert held > 5_000_000
            # Now read everything: every reply complete and correct, in order.
            reply = b"$%d\r\n%s\r\n" % (len(value), value)
            for i in range(count):
                assert recv_exactly(sock, len(reply)) == reply, f"reply {i}"
        finally:
            sock.close()


@pytest.mark.parametrize(
    ("codec", "garbage"),
    [
        ("http1", b"\x00\x01GARBAGE \xff\r\n\r\n"),
        ("redis", b"*abc\r\n\x00\xff"),
        ("dubbo", b"\x00\x00not dubbo at all, but long enough\x00\x00"),
        ("thrift", b"\xff\xff\xff\xff garbage garbage"),
    ],
)
def test_garbage_gets_error_or_close_and_others_unaffected(
    adapter: str, codec: str, garbage: bytes, redis_port: int
) -> None:
    # The healthy client talks redis; the garbage goes to a listener of `codec` in the
    # same proxy (one core), so a crash or a stuck loop would show on the healthy client.
    data = {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [
            {"name": "healthy", "address": "127.0.0.1:0", "codec": "redis",
             "routes": [{"name": "r", "route": {"cluster": "redis"}}]},
            {"name": "garbage", "address": "127.0.0.1:0", "codec": codec,
             "routes": [{"name": "g", "route": {"cluster": "redis"}}]},
        ],
        "clusters": [{"name": "redis", "endpoints": [f"127.0.0.1:{redis_port}"]}],
    }  # fmt: skip
    from metaprotocol.configfile import parse_config

    with start_proxy(parse_config(data), adapter) as running:
        healthy = redis.Redis(
            host="127.0.0.1", port=running.ports["healthy"], protocol=2, socket_timeout=DEADLINE
        )
        try:
            assert healthy.set(f"garbage-test:{codec}", "before") is True
            with socket.create_connection(("127.0.0.1", running.ports["garbage"]), DEADLINE) as bad:
                bad.sendall(garbage)
                answer = recv_until_closed(bad)  # the proxy must close it (bounded wait)
            if answer:
                assert _is_error_reply(codec, answer), answer
            assert healthy.get(f"garbage-test:{codec}") == b"before"
            counters = running.call(lambda: running.proxy.stats.snapshot().counters)
            assert counters[("request_decoding_error", (("listener", "garbage"),))] == 1
        finally:
            healthy.close()


def _is_error_reply(codec: str, answer: bytes) -> bool:
    if codec == "http1":
        return answer.startswith(b"HTTP/1.1 400 ")
    if codec == "redis":
        return answer.startswith(b"-ERR ")
    if codec == "dubbo":
        return answer[:2] == b"\xda\xbb" and answer[3] != 20
    return b"\x80\x01\x00\x03" in answer[:8]  # thrift: a TApplicationException message

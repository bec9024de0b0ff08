"""HTTP/1.1 limits end to end, on every adapter: what a client over a limit gets on the wire.

A bare-LF request is answered 400 and closed at once (it used to wait for the idle
timeout); a head over ``max_header_count`` fields gets 431 and a close, one at the limit
is served by the upstream (Python's http.server).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import DEADLINE, http_server, proxy_config


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    with http_server() as server:
        yield server.server_address[1]


@pytest.fixture
def proxied(adapter: str, upstream_port: int) -> Iterator[RunningProxy]:
    config = proxy_config(
        "http1",
        {"web": [upstream_port]},
        listener={"codec_options": {"max_header_count": 20}, "idle_timeout": "60s"},
    )
    with start_proxy(config, adapter) as running:
        yield running


def _exchange(running: RunningProxy, request: bytes) -> bytes:
    """Send ``request``; everything the proxy answers until it closes (or DEADLINE)."""
    with socket.create_connection(("127.0.0.1", running.ports["http1"]), timeout=DEADLINE) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def _fields(count: int) -> bytes:
    return b"".join(b"X-%d: v\r\n" % i for i in range(count))


def test_a_bare_lf_request_gets_400_and_a_close(proxied: RunningProxy) -> None:
    answer = _exchange(proxied, b"GET /hello HTTP/1.1\nHost: a\n\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nConnection: close\r\n" in answer


def test_one_field_over_max_header_count_gets_431_and_a_close(proxied: RunningProxy) -> None:
    head = b"GET /hello HTTP/1.1\r\nHost: a\r\n" + _fields(20) + b"\r\n"  # 21 fields
    answer = _exchange(proxied, head)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in answer


def test_a_head_at_max_header_count_is_served(proxied: RunningProxy) -> None:
    head = (
        b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + _fields(18) + b"\r\n"
    )  # 20 fields
    answer = _exchange(proxied, head)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello from python\n")

"""Dubbo end to end: the ``dubbo-ssl-python`` client through the proxy to the sample provider.

The PyPI client works without a registry: ``DubboClient(..., host="ip:port")`` connects
directly (ZooKeeper is only needed for ``zk_register``). Routing is by ``interface`` and
``version``; two provider processes stand behind two clusters so the route taken shows in
the per-cluster counters. Raw frames (built with the client's own encoder) check the wire
bytes of the proxy's error reply and its heartbeat answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from metaprotocol.samples.dubbo_provider import ECHO, GREETINGS
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.dubbo_frames import (
    DubboClient,
    DubboResponseException,
    connection_pool,
    read_frame,
    request_frame,
)
from tests.e2e.servers import DEADLINE, dubbo_provider, proxy_config, wait_until

STATUS_OK, STATUS_SERVICE_NOT_FOUND = 20, 60
ROUTES: list[dict[str, Any]] = [
    {"name": "greetings-v2",
     "match": {"metadata": {"interface": {"exact": GREETINGS}, "version": {"prefix": "2."}}},
     "route": {"cluster": "v2"}},
    {"name": "greetings", "match": {"metadata": {"interface": {"exact": GREETINGS}}},
     "route": {"cluster": "v1"}},
    {"name": "echo", "match": {"metadata": {"interface": {"exact": ECHO}}},
     "route": {"cluster": "v1"}},
]  # fmt: skip


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[int, int]]:
    with dubbo_provider() as one, dubbo_provider() as two:
        yield one, two


@pytest.fixture
def proxied(adapter: str, providers: tuple[int, int]) -> Iterator[RunningProxy]:
    one, two = providers
    with start_proxy(proxy_config("dubbo", {"v1": [one], "v2": [two]}, ROUTES), adapter) as r:
        try:
            yield r
        finally:
            _close_client_connection(f"127.0.0.1:{r.ports['dubbo']}")


def _close_client_connection(host: str) -> None:
    """Close dubbo_ssl's pooled connection to ``host`` (it never closes one itself).

    Shut it down first and let the client's reader thread drop it from the pool, so that
    thread never selects on a closed descriptor; then close the socket.
    """
    conn = connection_pool._connection_pool.get(host)
    if conn is None:
        return
    with contextlib.suppress(OSError):
        conn._Connection__sock.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: host not in connection_pool._connection_pool, message="dubbo_ssl to drop")
    conn.close()


def _cluster_requests(running: RunningProxy) -> dict[str, int]:
    snapshot = running.call(lambda: running.proxy.stats.snapshot())
    return {
        dict(labels)["route"]: value
        for (name, labels), value in snapshot.counters.items()
        if name == "route_hit"
    }


def test_client_routes_by_interface_and_version(proxied: RunningProxy) -> None:
    host = f"127.0.0.1:{proxied.ports['dubbo']}"
    v1 = DubboClient(GREETINGS, group="", version="1.0.0", host=host)
    v2 = DubboClient(GREETINGS, group="", version="2.0.0", host=host)
    echo = DubboClient(ECHO, group="", version="1.0.0", host=host)
    assert v1.call("sayHi", "ada", timeout=DEADLINE) == "hi, ada"
    assert v2.call("sayHi", "ada", timeout=DEADLINE) == "hello ada, from v2"
    assert echo.call("echo", "ünïcode " * 1000, timeout=DEADLINE) == "ünïcode " * 1000
    assert echo.call("echo", 12345, timeout=DEADLINE) == 12345
    # Concurrent slow calls share the proxy's upstream connections (request ids rewritten).
    with ThreadPoolExecutor(8) as pool:
        names = [f"n{i}" for i in range(16)]
        results = list(pool.map(lambda n: v1.call("sayHiSlowly", [n, 20], timeout=DEADLINE), names))
    assert results == [f"hi, {n}" for n in names]
    hits = _cluster_requests(proxied)
    assert hits == {"greetings-v2": 1, "greetings": 17, "echo": 2}


def test_client_surfaces_no_route_as_error(
    proxied: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # dubbo_ssl raises the reply's message and logs the status name (its only trace of it).
    host = f"127.0.0.1:{proxied.ports['dubbo']}"
    nowhere = DubboClient("org.example.Nowhere", group="", version="1.0.0", host=host)
    with caplog.at_level(logging.ERROR, logger="dubbo_ssl"):
        with pytest.raises(DubboResponseException, match="route_not_found"):
            nowhere.call("anything", "x", timeout=DEADLINE)
        assert "SERVICE_NOT_FOUND" in caplog.messages
        caplog.clear()
        # The provider's own error (unknown method) passes through with its status.
        echo = DubboClient(ECHO, group="", version="1.0.0", host=host)
        with pytest.raises(DubboResponseException, match="Not found exported service"):
            echo.call("nosuchmethod", "x", timeout=DEADLINE)
        assert "SERVICE_ERROR" in caplog.messages


def test_raw_frames_error_status_and_heartbeat(proxied: RunningProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxied.ports["dubbo"]), DEADLINE) as sock:
        good = request_frame(GREETINGS, "1.0.0", "sayHi", ["raw"])
        bad = request_frame("org.example.Nowhere", "1.0.0", "x", [])
        good_id = struct.unpack("!q", good[4:12])[0]
        bad_id = struct.unpack("!q", bad[4:12])[0]
        heartbeat = bytes([0xDA, 0xBB, 0xE2, 0]) + struct.pack("!qi", 777, 1) + b"N"
        sock.sendall(bad + heartbeat + good)
        replies = {}
        for _ in range(3):
            flag, status, request_id, body = read_frame(sock)
            replies[request_id] = (flag, status, body)
        flag, status, body = replies[bad_id]
        assert (flag & 0x80, status) == (0, STATUS_SERVICE_NOT_FOUND)  # a response
        assert b"route_not_found" in body
        flag, status, body = replies[777]
        assert (flag & 0xA0, status, body) == (0x20, STATUS_OK, b"N")  # heartbeat response
        flag, status, body = replies[good_id]
        assert status == STATUS_OK
        assert b"hi, raw" in body

"""Redis inline commands through the proxy to a real redis-server, on every adapter.

redis-server would wait forever on an inline line holding a NUL (its ``strchr`` stops
there), holding up every client that shares the upstream connection; the proxy answers
such a line itself and sends every other inline command on as a RESP array.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import DEADLINE, proxy_config


@pytest.fixture
def proxied(adapter: str, redis_port: int) -> Iterator[RunningProxy]:
    # One upstream connection: every client shares it.
    config = proxy_config(
        "redis", {"main": [redis_port]}, cluster_options={"max_connections_per_endpoint": 1}
    )
    with start_proxy(config, adapter) as running:
        yield running


def _line_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


def test_an_inline_nul_is_answered_and_the_shared_upstream_keeps_serving(
    proxied: RunningProxy, redis_port: int, adapter: str
) -> None:
    port = proxied.ports["redis"]
    innocent = redis.Redis(host="127.0.0.1", port=port, socket_timeout=DEADLINE)
    direct = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=DEADLINE)
    key = f"inline:{adapter}:innocent"
    assert innocent.ping() is True  # the one upstream connection is open
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as hostile:
        hostile.sendall(b"GET a\x00\r\n")
        # The innocent client's commands share the upstream connection with it.
        assert innocent.set(key, "v") is True
        assert innocent.get(key) == b"v"
        assert _line_reply(hostile).startswith(b"-ERR Protocol error: NUL byte")
        hostile.sendall(b"PING\r\n")  # the hostile client's connection goes on too
        assert _line_reply(hostile) == b"+PONG\r\n"
    assert direct.get(key) == b"v"
    innocent.close()
    direct.close()


def test_inline_commands_run_with_the_arguments_the_proxy_read(
    proxied: RunningProxy, redis_port: int, adapter: str
) -> None:
    key = f"inline:{adapter}:a b"
    with socket.create_connection(("127.0.0.1", proxied.ports["redis"]), timeout=DEADLINE) as s:
        s.sendall(b"SET \"%s\" 'c d'\r\n" % key.encode())
        assert _line_reply(s) == b"+OK\r\n"
    direct = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=DEADLINE)
    assert direct.get(key) == b"c d"
    direct.close()

"""Redis end to end: redis-server behind the proxy, driven by redis-py and redis-benchmark."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.connection import _HiredisParser, _RESP2Parser

from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import DEADLINE, big_body, proxy_config, recv_exactly
from tests.peers import require_binary

_PARSERS: dict[str, Any] = {"hiredis": _HiredisParser, "python": _RESP2Parser}


@pytest.fixture
def proxied(adapter: str, redis_port: int) -> Iterator[RunningProxy]:
    config = proxy_config("redis", {"main": [redis_port]})
    with start_proxy(config, adapter) as running:
        yield running


def _client(port: int, **options: Any) -> redis.Redis:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, socket_timeout=DEADLINE, **options)
    return redis.Redis(connection_pool=pool)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("parser", sorted(_PARSERS))
def test_redis_py_commands_through_proxy(
    proxied: RunningProxy, redis_port: int, parser: str, protocol: int, adapter: str
) -> None:
    client = _client(proxied.ports["redis"], parser_class=_PARSERS[parser], protocol=protocol)
    direct = _client(redis_port, protocol=2)
    prefix = f"e2e:{adapter}:{parser}:{protocol}:"
    try:
        # The parser really is the one asked for (redis-py picks RESP3's for protocol 3).
        conn = client.connection_pool.get_connection()
        try:
            kind = type(conn._parser).__name__
        finally:
            client.connection_pool.release(conn)
        assert ("Hiredis" in kind) == (parser == "hiredis"), kind

        assert client.ping() is True
        binary = b"\x00\r\n$-1\r\n*3\r\n" + bytes(range(256))
        large = big_body(300_000)
        assert client.set(prefix + "binary", binary) is True
        assert client.set(prefix + "large", large) is True
        assert client.get(prefix + "binary") == binary
        assert client.get(prefix + "large") == large
        assert direct.get(prefix + "large") == large  # it really reached the server
        assert client.get(prefix + "missing") is None
        assert client.incrby(prefix + "n", 41) == 41
        assert client.incr(prefix + "n") == 42
        assert client.rpush(prefix + "list", b"a", b"b", b"c") == 3
        assert client.lrange(prefix + "list", 0, -1) == [b"a", b"b", b"c"]
        client.hset(prefix + "h", mapping={"f1": "v1", "f2": "v2"})
        assert client.hgetall(prefix + "h") == {b"f1": b"v1", b"f2": b"v2"}

        # A 300-command pipeline (no MULTI): every reply in order.
        pipe = client.pipeline(transaction=False)
        for i in range(150):
            pipe.set(f"{prefix}p{i}", f"value-{i}")
            pipe.get(f"{prefix}p{i}")
        replies = pipe.execute()
        assert replies[0::2] == [True] * 150
        assert replies[1::2] == [f"value-{i}".encode() for i in range(150)]
        assert client.mget([f"{prefix}p{i}" for i in range(150)]) == replies[1::2]

        # Server-side errors pass through untouched.
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            client.incr(prefix + "list")
        assert client.delete(prefix + "binary", prefix + "large") == 2
        assert direct.exists(prefix + "binary") == 0
    finally:
        client.close()
        direct.close()


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_through_proxy(
    proxied: RunningProxy, redis_port: int, pipeline: int
) -> None:
    binary = require_binary("redis-benchmark")
    result = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(proxied.ports["redis"]),
         "-t", "ping_mbulk,set,get", "-n", "2000", "-c", "20", "-q", "-P", str(pipeline)],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, out
    assert "error" not in out.lower(), out
    finished = dict(re.findall(r"([A-Z_]+): ([0-9.]+) requests per second", out))
    assert set(finished) == {"PING_MBULK", "SET", "GET"}, out
    assert all(float(rps) > 0 for rps in finished.values()), out
    # redis-benchmark's SET writes the 3-byte value "VXK" under this literal key name.
    direct = _client(redis_port)
    try:
        assert direct.get("key:__rand_int__") == b"VXK"
    finally:
        direct.close()
    stats = proxied.call(lambda: proxied.proxy.stats.snapshot())
    listener = (("listener", "redis"),)
    assert stats.counters[("request", listener)] >= 6000
    assert stats.counters[("local_response_error", listener)] == 0
    # Pipelined commands travel merged (one message per run), yet each one is counted.
    assert stats.counters[("response", listener)] == stats.counters[("request", listener)]
    if pipeline > 1:
        assert stats.counters[("request_merged", listener)] > 0


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n", b"pub/sub needs a dedicated connection"),
        (b"*1\r\n$5\r\nMULTI\r\n", b"transactions need a dedicated connection"),
        (b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n", b"blocking commands would stall"),
    ],
)
def test_non_poolable_command_gets_clear_error(
    redis_port: int, command: bytes, reason: bytes
) -> None:
    # One adapter is enough here: the reply is built by the codec, not the adapter.
    with start_proxy(proxy_config("redis", {"main": [redis_port]}), "asyncio") as running:
        with socket.create_connection(("127.0.0.1", running.ports["redis"]), DEADLINE) as sock:
            name = command.split(b"\r\n")[2]
            sock.sendall(command + b"*1\r\n$4\r\nPING\r\n")
            expected = b"-ERR command " + name + b" is not supported by the proxy: " + reason
            head = recv_exactly(sock, len(expected))
            assert head == expected
            rest = b""
            while not rest.endswith(b"+PONG\r\n"):
                chunk = sock.recv(4096)
                assert chunk, f"closed; got {head + rest!r}"
                rest += chunk
            # The client connection stays usable: the PING behind it was answered.
            assert rest.count(b"\r\n") == 2, rest
        client = _client(running.ports["redis"], protocol=2)
        try:
            with pytest.raises(redis.ResponseError, match="transactions need a dedicated"):
                client.execute_command("MULTI")
            assert client.ping() is True
        finally:
            client.close()


def test_routing_by_key_prefix(redis_port: int, redis_port_b: int, adapter: str) -> None:
    routes = [
        {"name": "sessions", "match": {"metadata": {"key": {"prefix": "session:"}}},
         "route": {"cluster": "b"}},
        {"name": "default", "route": {"cluster": "a"}},
    ]  # fmt: skip
    config = proxy_config("redis", {"a": [redis_port], "b": [redis_port_b]}, routes)
    with start_proxy(config, adapter) as running:
        client = _client(running.ports["redis"], protocol=2)
        a, b = _client(redis_port), _client(redis_port_b)
        try:
            client.set(f"session:{adapter}", "in-b")
            client.set(f"plain:{adapter}", "in-a")
            assert b.get(f"session:{adapter}") == b"in-b"
            assert a.get(f"session:{adapter}") is None
            assert a.get(f"plain:{adapter}") == b"in-a"
            assert b.get(f"plain:{adapter}") is None
            assert client.get(f"session:{adapter}") == b"in-b"
        finally:
            for c in (client, a, b):
                c.close()

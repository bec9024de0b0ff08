"""Global rate limiting against a real redis-server: RESP codec, the three clients, and the
``ExternalCall(kind="global_ratelimit")`` round trip through every adapter."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from metaprotocol.core.config import ClusterTls, Config, ListenerConfig, RateLimitRedisConfig
from metaprotocol.core.events import ExternalCallCompleted
from metaprotocol.core.outputs import ExternalCall
from metaprotocol.core.secrets import Credentials, Secret
from metaprotocol.ratelimit_redis import (
    NEED,
    AnyioRedisRateLimiter,
    AsyncioRedisRateLimiter,
    BlockingRedisRateLimiter,
    RedisUnavailable,
    RespError,
    RespReader,
    encode_command,
    parse_redis_address,
    rate_limit_command,
)
from metaprotocol.testing.serving import ADAPTERS, start_proxy
from tests.adapters.fakecore import FakeCore
from tests.e2e.servers import redis_server
from tests.e2e.tls_peers import Pki, make_pki, redis_tls_server
from tests.peers import require_binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    binary = require_binary("redis-server")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as s:
                    s.sendall(encode_command("PING"))
                    if s.recv(64) == b"+PONG\r\n":
                        break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _payload(domain: str, limit: int = 3, unit: float = 60.0) -> dict[str, Any]:
    return {"domain": domain, "descriptor": [["method", "get"]], "limit": limit, "unit": unit}


def test_resp_reader_handles_split_replies_of_every_type() -> None:
    wire = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n"
    reader = RespReader()
    replies: list[Any] = []
    for i in range(len(wire)):  # byte at a time
        reader.feed(wire[i : i + 1])
        while (reply := reader.get()) is not NEED:
            replies.append(reply)
    assert replies[0] == "OK" and isinstance(replies[1], RespError)
    assert replies[2:] == [42, b"abc", None, [1, b"x"]]


def test_rate_limit_key_uses_a_fixed_window() -> None:
    command, limit = rate_limit_command(_payload("d", 5, 10.0), wall_time=1234.5)
    assert limit == 5
    assert b"d|method=get|123\r\n" in command and b"$5\r\n10000\r\n" in command
    assert parse_redis_address({"address": "10.0.0.1:6379"}) == ("10.0.0.1", 6379)
    assert parse_redis_address("redis://localhost:7000/0") == ("localhost", 7000)
    with pytest.raises(ValueError, match="host:port"):
        parse_redis_address("localhost")


def test_asyncio_client_counts_within_the_window(redis_port: int) -> None:
    async def main() -> list[bool]:
        limiter = AsyncioRedisRateLimiter("127.0.0.1", redis_port)
        try:
            return list(await asyncio.gather(*(limiter.check(_payload("aio")) for _ in range(5))))
        finally:
            await limiter.aclose()

    assert asyncio.run(main()) == [True, True, True, False, False]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_anyio_client_counts_within_the_window(redis_port: int, backend: str) -> None:
    async def main() -> list[bool]:
        limiter = AnyioRedisRateLimiter("127.0.0.1", redis_port)
        try:
            return [await limiter.check(_payload(f"anyio-{backend}")) for _ in range(4)]
        finally:
            await limiter.aclose()

    assert anyio.run(main, backend=backend) == [True, True, True, False]


def test_blocking_client_and_redis_down(redis_port: int) -> None:
    limiter = BlockingRedisRateLimiter("127.0.0.1", redis_port)
    assert [limiter.check(_payload("blk", limit=1)) for _ in range(2)] == [True, False]
    limiter.close()
    down = BlockingRedisRateLimiter("127.0.0.1", _free_port())
    with pytest.raises(RedisUnavailable):
        down.check(_payload("blk"))
    assert down.failures == 1


def test_asyncio_client_redis_down_counts_failures() -> None:
    async def main() -> AsyncioRedisRateLimiter:
        limiter = AsyncioRedisRateLimiter("127.0.0.1", _free_port())
        for _ in range(2):
            with pytest.raises(RedisUnavailable):
                await limiter.check(_payload("down"))
        return limiter

    assert asyncio.run(main()).failures == 2


def _config(redis_port: int, auth: Credentials | None = None, db: int = 0) -> Config:
    return Config(
        listeners=(ListenerConfig(name="echo", host="127.0.0.1", port=0, codec="x", routes=()),),
        clusters=(),
        global_ratelimit_redis=RateLimitRedisConfig("127.0.0.1", redis_port, auth, db),
    )


def _completed(core: FakeCore) -> list[ExternalCallCompleted]:
    return [e for _, e in core.events if isinstance(e, ExternalCallCompleted)]


@pytest.mark.parametrize("healthy", [True, False], ids=["redis-up", "redis-down"])
@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "uvloop"])
def test_external_call_round_trip_through_each_adapter(
    redis_port: int, adapter: str, healthy: bool
) -> None:
    config = _config(redis_port if healthy else _free_port())
    core = FakeCore(config)
    with start_proxy(config, adapter, proxy=core) as running:
        calls = [ExternalCall(i, "global_ratelimit", _payload(f"rt-{adapter}", 1)) for i in (1, 2)]
        running.call(lambda: running.dispatcher.apply(list(calls)))
        end = time.monotonic() + 10
        while len(done := running.call(lambda: _completed(core))) < 2:
            assert time.monotonic() < end, "external calls never completed"
            time.sleep(0.005)
        by_call = {e.call: e for e in done}
        assert sorted(by_call) == [1, 2]
        if healthy:
            assert {by_call[1].result, by_call[2].result} == {True, False}
            assert not by_call[1].error and not by_call[2].error
        else:
            assert all(e.error and e.result is None for e in done)
            errors = running.call(lambda: core.stats.counter("global_ratelimit_redis_errors"))
            assert errors == 2


class _HeldRedis:
    """A stand-in Redis that answers one command only when told to (``release``)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.received = threading.Event()
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)  # the EVAL command
            self.received.set()
            self.released.wait(10)
            conn.sendall(b":1\r\n")  # the first hit in this window
            conn.recv(1)  # until the proxy closes

    def close(self) -> None:
        self.released.set()
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "uvloop"])
def test_a_slow_redis_does_not_stall_the_loop(adapter: str) -> None:
    # While Redis sits on a rate-limit call, the loop still runs other work: the call
    # below is served before the verdict exists. (The blocking adapter used to wait for
    # Redis on its only thread.)
    redis = _HeldRedis()
    try:
        config = _config(redis.port)
        core = FakeCore(config)
        with start_proxy(config, adapter, proxy=core) as running:
            call = ExternalCall(1, "global_ratelimit", _payload(f"held-{adapter}", 5))
            running.call(lambda: running.dispatcher.apply([call]))
            assert redis.received.wait(10), "the rate-limit command never reached Redis"
            assert running.call(lambda: _completed(core)) == []
            redis.released.set()
            end = time.monotonic() + 10
            while not (done := running.call(lambda: _completed(core))):
                assert time.monotonic() < end, "the rate-limit call never completed"
                time.sleep(0.005)
            assert [(e.call, e.result, e.error) for e in done] == [(1, True, "")]
    finally:
        redis.close()


REDIS_PASSWORD = "rl-s3cret-pw"


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    with redis_server(password=REDIS_PASSWORD) as port:
        yield port


@pytest.mark.parametrize("password", ["right", "wrong"])
@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "uvloop"])
def test_limiter_logs_in_and_selects_its_database(
    redis_with_password: int, adapter: str, password: str
) -> None:
    """``global_ratelimit_redis: {auth, db}``: each adapter's client sends AUTH and SELECT on
    its connection; the counter lands in that database. A refused login fails the call
    (the filter's failure mode applies) without the password in the error."""
    secret = REDIS_PASSWORD if password == "right" else "not-the-password"
    auth = Credentials(Secret(secret))
    config = _config(redis_with_password, auth, db=5)
    core = FakeCore(config)
    domain = f"auth-{adapter}-{password}"
    with start_proxy(config, adapter, proxy=core) as running:
        call = ExternalCall(1, "global_ratelimit", _payload(domain, 1))
        running.call(lambda: running.dispatcher.apply([call]))
        end = time.monotonic() + 10
        while not (done := running.call(lambda: _completed(core))):
            assert time.monotonic() < end, "the external call never completed"
            time.sleep(0.005)
    if password == "wrong":
        assert done[0].result is None
        assert "WRONGPASS" in done[0].error and secret not in done[0].error
        return
    assert done[0].result is True and not done[0].error
    with socket.create_connection(("127.0.0.1", redis_with_password), 5) as direct:
        direct.sendall(
            encode_command("AUTH", REDIS_PASSWORD)
            + encode_command("SELECT", 5)
            + encode_command("KEYS", f"{domain}|*")
        )
        reader = RespReader()
        replies: list[Any] = []
        while len(replies) < 3:
            reader.feed(direct.recv(65536))
            while (reply := reader.get()) is not NEED:
                replies.append(reply)
    assert replies[:2] == ["OK", "OK"]
    assert len(replies[2]) == 1  # the window's counter, in database 5


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, int]]:
    """redis-server with TLS only, requiring a client certificate from the test CA."""
    pki = make_pki(tmp_path_factory.mktemp("ratelimit-pki"))
    with redis_tls_server(pki) as port:
        yield pki, port


@pytest.mark.parametrize("server_name", ["redis.test", "wrong.test"])
@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "uvloop"])
def test_limiter_connects_over_tls(
    tls_redis: tuple[Pki, int], adapter: str, server_name: str
) -> None:
    """``global_ratelimit_redis: {tls}``: each adapter's client verifies the server (its name
    included) and presents the proxy's client certificate; a server that fails verification
    fails the call (the filter's failure mode applies)."""
    pki, port = tls_redis
    tls = ClusterTls(pki.ca, pki.client_cert, pki.client_key, server_name)
    config = Config(
        listeners=(ListenerConfig(name="echo", host="127.0.0.1", port=0, codec="x", routes=()),),
        clusters=(),
        global_ratelimit_redis=RateLimitRedisConfig("127.0.0.1", port, tls=tls),
    )
    core = FakeCore(config)
    domain = f"tls-{adapter}-{server_name}"
    with start_proxy(config, adapter, proxy=core) as running:
        call = ExternalCall(1, "global_ratelimit", _payload(domain, 1))
        running.call(lambda: running.dispatcher.apply([call]))
        end = time.monotonic() + 10
        while not (done := running.call(lambda: _completed(core))):
            assert time.monotonic() < end, "the external call never completed"
            time.sleep(0.005)
    if server_name == "wrong.test":
        assert done[0].result is None and done[0].error
        return
    assert done[0].result is True and not done[0].error
    direct = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=pki.ca,
        ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key, socket_timeout=10,
    )  # fmt: skip
    try:
        assert len(direct.keys(f"{domain}|*")) == 1  # the window's counter, over TLS
    finally:
        direct.close()

"""Redis logins end to end: a redis-server with ``--requirepass`` behind the proxy, redis-py
logging in to the proxy (``codec_options.auth``), the proxy logging in upstream (cluster
``auth``), and no secret in ``/config_dump`` or the logs."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metaprotocol.core.config import Config, PluginFilterConfig
from metaprotocol.core.filters import Filter, FilterResult
from metaprotocol.core.stats import Labels, Stats
from metaprotocol.testing.serving import start_proxy
from tests.e2e.servers import DEADLINE, proxy_config, redis_server, scrape_admin

UPSTREAM_PASSWORD = "upstream-pw-7f3a9c"
PROXY_PASSWORD = "proxy-pw-c41d2e"
SECRETS = (UPSTREAM_PASSWORD, PROXY_PASSWORD)


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[int]:
    """A redis-server that requires a password."""
    with redis_server(password=UPSTREAM_PASSWORD) as port:
        yield port


def _config(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream_password: str
) -> Config:
    """Clients log in with the password from an environment variable; the proxy logs in to
    redis-server with the password from a file."""
    secret_file = tmp_path / "upstream-password"
    secret_file.write_text(upstream_password + "\n")
    monkeypatch.setenv("MP_E2E_PROXY_PASSWORD", PROXY_PASSWORD)
    return proxy_config(
        "redis",
        {"main": [port]},
        listener={"codec_options": {"auth": {"password_env": "MP_E2E_PROXY_PASSWORD"}}},
        cluster_options={"auth": {"password_file": str(secret_file)}},
    )


def _client(port: int, **options: Any) -> redis.Redis:
    # No retries: each refusal must surface as the one error the proxy sent.
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=DEADLINE, retry=Retry(NoBackoff(), 0),
        **options,
    )  # fmt: skip


@pytest.mark.parametrize("protocol", [2, 3])
def test_clients_log_in_to_the_proxy_and_the_proxy_to_redis(
    adapter: str, locked_redis: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: int
) -> None:
    config = _config(locked_redis, tmp_path, monkeypatch, UPSTREAM_PASSWORD)
    with start_proxy(config, adapter) as running:
        port = running.ports["redis"]
        client = _client(port, password=PROXY_PASSWORD, protocol=protocol)
        key = f"auth:{adapter}:{protocol}"
        try:
            assert client.set(key, b"value") is True
            assert client.get(key) == b"value"
            pipe = client.pipeline(transaction=False)
            for _ in range(20):
                pipe.incr(key + ":n")
            assert pipe.execute() == list(range(1, 21))
        finally:
            client.close()
        direct = _client(locked_redis, password=UPSTREAM_PASSWORD)
        try:
            assert direct.get(key) == b"value"  # it reached the password-protected server
        finally:
            direct.close()

        wrong = _client(port, password="not-the-password", protocol=protocol)
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            wrong.ping()
        wrong.close()

        anonymous = _client(port, protocol=2)
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            anonymous.get(key)
        anonymous.close()
        failed = running.call(
            lambda: running.proxy.stats.counter("downstream_auth_failed", (("listener", "redis"),))
        )
        assert failed == 1


def test_a_wrong_upstream_password_is_a_connect_failure_not_a_hang(
    adapter: str, locked_redis: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(locked_redis, tmp_path, monkeypatch, "a-wrong-upstream-password")
    with start_proxy(config, adapter) as running:
        client = _client(running.ports["redis"], password=PROXY_PASSWORD, protocol=2)
        try:
            for _ in range(2):  # each try opens (and fails) a new upstream connection
                with pytest.raises(redis.ResponseError) as info:
                    client.get("k")
                assert str(info.value) == "upstream connect failure: connect failed"
        finally:
            client.close()
        cluster = (("cluster", "main"),)
        fails = running.call(
            lambda: running.proxy.stats.counter("upstream_cx_connect_fail", cluster)
        )
        assert fails >= 2


class _Explodes(Filter):
    """Raises on every request (a buggy plugin filter)."""

    name = "explodes"

    def __init__(self, settings: Any, stats: Stats, labels: Labels) -> None:
        pass

    def on_request(self, properties: Any, now: float) -> FilterResult:
        raise RuntimeError("plugin bug")


def test_no_secret_in_the_config_dump_or_the_logs(
    locked_redis: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Everything that logs, at DEBUG: logins that work, a refused client login, a refused
    upstream login, a filter that raises on a request that carries a password."""
    caplog.set_level(logging.DEBUG)
    good = _config(locked_redis, tmp_path, monkeypatch, UPSTREAM_PASSWORD)
    # Inline passwords too: the forms that are most at risk of being echoed.
    inline = proxy_config(
        "redis",
        {"main": [locked_redis]},
        listener={"codec_options": {"auth": {"password": PROXY_PASSWORD}}},
        cluster_options={"auth": {"username": "default", "password": "wrong-" + UPSTREAM_PASSWORD}},
    )
    for config in (good, inline):
        with start_proxy(config, "asyncio") as running:
            assert running.admin_address is not None
            dump = scrape_admin(running.admin_address, "/config_dump")
            assert "<redacted>" in dump or "password_file" in dump
            assert not any(secret in dump for secret in SECRETS)
            json.loads(dump)
            port = running.ports["redis"]
            client = _client(port, password=PROXY_PASSWORD, protocol=2)
            try:
                if config is good:
                    client.set("logs:k", "v")
                else:
                    with pytest.raises(redis.ResponseError, match="upstream connect failure"):
                        client.get("logs:k")
            finally:
                client.close()
            wrong = _client(port, password="wrong-" + PROXY_PASSWORD)
            with pytest.raises(redis.AuthenticationError):
                wrong.ping()
            wrong.close()
    assert "connect failure: upstream refused AUTH: WRONGPASS" in caplog.text

    # A filter that raises on a request carrying a password (AUTH passes the filter only
    # once logged in; the SET after it carries the password as its value).
    listener = dataclasses.replace(
        good.listeners[0], filters=(PluginFilterConfig("explodes", _Explodes, {}),)
    )
    with start_proxy(dataclasses.replace(good, listeners=(listener,)), "asyncio") as running:
        client = _client(running.ports["redis"], password=PROXY_PASSWORD, protocol=2)
        try:
            with pytest.raises(redis.ResponseError, match="proxy error: internal error"):
                client.set("logs:k", PROXY_PASSWORD)
        finally:
            client.close()
    failures = [r for r in caplog.records if "filter explodes raised" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "route default" in failures[0].getMessage()
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert not any(secret in logged for secret in SECRETS), logged

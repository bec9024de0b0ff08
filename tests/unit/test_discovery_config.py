"""Cluster ``discovery``, ``dns_refresh`` and ``health_check``: defaults, values, errors by path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metaprotocol.admin import AdminApp
from metaprotocol.configfile import ConfigError, parse_config
from metaprotocol.core.config import (
    DEFAULT_DNS_REFRESH,
    ClusterConfig,
    HealthCheck,
    HealthCheckRequest,
)
from metaprotocol.core.stats import Stats


def _config(cluster: dict[str, Any], *, codecs: tuple[str, ...] = ("redis",)) -> dict[str, Any]:
    listeners = [
        {
            "name": f"l{i}",
            "address": f"127.0.0.1:{7000 + i}",
            "codec": codec,
            "routes": [{"name": "all", "route": {"cluster": "c"}}],
        }
        for i, codec in enumerate(codecs)
    ]
    return {"listeners": listeners, "clusters": [{"name": "c", **cluster}]}


def _cluster(cluster: dict[str, Any]) -> ClusterConfig:
    return parse_config(_config(cluster)).clusters[0]


def _errors(cluster: dict[str, Any], *, codecs: tuple[str, ...] = ("redis",)) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(cluster, codecs=codecs))
    return caught.value.errors


def test_defaults_are_one_shot_resolution_and_no_health_check() -> None:
    cluster = _cluster({"endpoints": ["cache.internal:6379"]})
    assert cluster.discovery == "static"
    assert cluster.dns_refresh == DEFAULT_DNS_REFRESH == 30.0
    assert cluster.health_check is None


def test_dns_discovery_with_its_refresh() -> None:
    cluster = _cluster({"endpoints": ["cache.internal:6379"], "discovery": "dns"})
    assert (cluster.discovery, cluster.dns_refresh) == ("dns", 30.0)
    cluster = _cluster(
        {"endpoints": ["cache.internal:6379"], "discovery": "dns", "dns_refresh": "250ms"}
    )
    assert cluster.dns_refresh == 0.25


def test_an_empty_health_check_takes_every_default() -> None:
    check = _cluster({"endpoints": ["127.0.0.1:6379"], "health_check": {}}).health_check
    assert check == HealthCheck(5.0, 1.0, 3, 2, HealthCheckRequest("/", None))


def test_every_health_check_key_maps_to_its_field() -> None:
    spec = {
        "interval": "2s",
        "timeout": "500ms",
        "unhealthy_threshold": 4,
        "healthy_threshold": 1,
        "request": {"path": "/healthz?full=1", "host": "api.internal:8080"},
    }
    check = _cluster({"endpoints": ["127.0.0.1:80"], "health_check": spec}).health_check
    assert check == HealthCheck(
        2.0, 0.5, 4, 1, HealthCheckRequest("/healthz?full=1", "api.internal:8080")
    )


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({"discovery": "dsn"}, "clusters[0].discovery: expected one of static, dns, got 'dsn'"),
        ({"dns_refresh": "5s"}, "clusters[0].dns_refresh: only applies with discovery: dns"),
        (
            {"discovery": "static", "dns_refresh": "5s"},
            "clusters[0].dns_refresh: only applies with discovery: dns",
        ),
        (
            {"discovery": "dns", "dns_refresh": "0s"},
            "clusters[0].dns_refresh: must be > 0, got '0s'",
        ),
        ({"health_check": []}, "clusters[0].health_check: expected a mapping, got a list"),
        (
            {"health_check": {"intervall": "1s"}},
            "clusters[0].health_check.intervall: unknown key (did you mean 'interval'?)",
        ),
        (
            {"health_check": {"interval": "soon"}},
            "clusters[0].health_check.interval: expected a duration like 250ms, 1s, 5m, got 'soon'",
        ),
        (
            {"health_check": {"unhealthy_threshold": 0}},
            "clusters[0].health_check.unhealthy_threshold: must be > 0, got 0",
        ),
        (
            {"health_check": {"healthy_threshold": "2"}},
            "clusters[0].health_check.healthy_threshold: expected an integer, got '2'",
        ),
        (
            {"health_check": {"interval": "1s", "timeout": "2s"}},
            "clusters[0].health_check.timeout: timeout (2s) must not exceed interval (1s)",
        ),
        (
            {"health_check": {"interval": "500ms"}},
            "clusters[0].health_check.interval: timeout (1s) must not exceed interval (0.5s)",
        ),
        (
            {"health_check": {"request": {"path": "healthz"}}},
            "clusters[0].health_check.request.path: expected a path starting with / "
            "(visible ASCII, no spaces), got 'healthz'",
        ),
        (
            {"health_check": {"request": {"path": "/a b"}}},
            "clusters[0].health_check.request.path: expected a path starting with / "
            "(visible ASCII, no spaces), got '/a b'",
        ),
        (
            {"health_check": {"request": {"host": "evil\r\nX-Injected: 1"}}},
            "clusters[0].health_check.request.host: expected a host name or address, "
            "with an optional :port, got 'evil\\r\\nX-Injected: 1'",
        ),
        (
            {"health_check": {"request": {"method": "HEAD"}}},
            "clusters[0].health_check.request.method: unknown key (expected one of: path, host)",
        ),
    ],
)
def test_each_bad_value_is_reported_at_its_path(cluster: dict[str, Any], expected: str) -> None:
    errors = _errors({"endpoints": ["127.0.0.1:6379"], **cluster})
    assert errors == [expected]


def test_a_health_checked_cluster_behind_listeners_of_two_codecs_is_refused() -> None:
    errors = _errors({"endpoints": ["127.0.0.1:80"], "health_check": {}}, codecs=("redis", "http1"))
    assert errors == [
        "clusters[0].health_check: listeners of different codecs route to this cluster "
        "('l1' (http1), 'l0' (redis)): its probe needs one protocol"
    ]
    # Without a health check nothing is probed, so the codecs may differ.
    parse_config(_config({"endpoints": ["127.0.0.1:80"]}, codecs=("redis", "http1")))


def test_config_dump_shows_discovery_and_health_check_as_written() -> None:
    written = {
        "endpoints": ["cache.internal:6379"],
        "discovery": "dns",
        "dns_refresh": "10s",
        "health_check": {"interval": "2s", "unhealthy_threshold": 2},
    }
    config = parse_config(_config(written))
    app = AdminApp(
        ready=lambda: True, snapshot=lambda: Stats().snapshot(), config_raw=lambda: config.raw
    )
    status, _, body = app.respond("GET", "/config_dump")
    assert status == 200
    (dumped,) = json.loads(body)["clusters"]
    assert dumped == {"name": "c", **written}

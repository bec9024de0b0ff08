"""CDS ``health_checks`` and ``STRICT_DNS`` onto a cluster's ``health_check`` and ``discovery``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2

from metaprotocol.core.config import HealthCheck, HealthCheckRequest
from metaprotocol.xds.translate import XdsError, cluster_config
from tests.xds.resources import cluster


def _checked(**thresholds: int) -> tuple[cluster_pb2.Cluster, health_check_pb2.HealthCheck]:
    c = cluster("cache", eds=False, static=[6379])
    hc = c.health_checks.add()
    hc.interval.FromMilliseconds(2500)
    hc.timeout.FromMilliseconds(500)
    for name, value in thresholds.items():
        getattr(hc, name).value = value
    return c, hc


def test_a_tcp_health_check_maps_onto_the_codecs_probe() -> None:
    c, hc = _checked(unhealthy_threshold=4, healthy_threshold=1)
    hc.tcp_health_check.SetInParent()
    got = cluster_config(c, None).health_check
    assert got == HealthCheck(2.5, 0.5, 4, 1, HealthCheckRequest())


def test_an_http_health_check_gives_the_path_and_host() -> None:
    c, hc = _checked()
    hc.http_health_check.path = "/healthz"
    hc.http_health_check.host = "api.internal"
    got = cluster_config(c, None).health_check
    # Unset thresholds take the defaults.
    assert got == HealthCheck(2.5, 0.5, 3, 2, HealthCheckRequest("/healthz", "api.internal"))


def test_envoys_redis_health_checker_is_the_codecs_ping() -> None:
    c, hc = _checked()
    hc.custom_health_check.name = "envoy.health_checkers.redis"
    health_check = cluster_config(c, None).health_check
    assert health_check is not None and health_check.request == HealthCheckRequest()


def test_without_health_checks_the_cluster_has_none() -> None:
    assert cluster_config(cluster("cache"), None).health_check is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c, hc: c.health_checks.add().CopyFrom(hc), "only one health check"),
        (lambda c, hc: hc.timeout.FromSeconds(5), "timeout must not exceed interval"),
        (lambda c, hc: hc.ClearField("interval"), "timeout and interval must be positive"),
        (lambda c, hc: setattr(hc.unhealthy_threshold, "value", 0), "unhealthy_threshold must be"),
        (lambda c, hc: hc.grpc_health_check.SetInParent(), "grpc_health_check is not supported"),
        (lambda c, hc: None, "no health checker is not supported"),
        (
            lambda c, hc: setattr(hc.custom_health_check, "name", "acme.checker"),
            "custom_health_check 'acme.checker' is not supported",
        ),
        (
            lambda c, hc: setattr(hc.tcp_health_check.send, "text", "50494e47"),
            "tcp_health_check send/receive payloads are not supported",
        ),
        (
            lambda c, hc: setattr(hc.http_health_check, "path", "/a b"),
            "http_health_check.path '/a b' is not an origin-form path",
        ),
    ],
)
def test_health_checks_that_cannot_be_honoured_are_refused(
    edit: Callable[[cluster_pb2.Cluster, health_check_pb2.HealthCheck], object], expected: str
) -> None:
    c, hc = _checked()  # hc is c.health_checks[0]: edits change the cluster
    edit(c, hc)
    with pytest.raises(XdsError, match=f"cluster 'cache': health_checks\\[0\\]: {expected}|"
                       f"cluster 'cache': {expected}"):  # fmt: skip
        cluster_config(c, None)


def test_strict_dns_is_dns_discovery_at_envoys_refresh_or_the_clusters() -> None:
    c = cluster("cache", eds=False, static=[6379])
    c.type = cluster_pb2.Cluster.STRICT_DNS
    got = cluster_config(c, None)
    assert (got.discovery, got.dns_refresh) == ("dns", 5.0)  # Envoy's default dns_refresh_rate
    c.dns_refresh_rate.FromMilliseconds(1500)
    assert cluster_config(c, None).dns_refresh == 1.5
    c.dns_refresh_rate.FromSeconds(0)
    c.dns_refresh_rate.nanos = 0
    with pytest.raises(XdsError, match="dns_refresh_rate must be positive"):
        cluster_config(c, None)


@pytest.mark.parametrize("kind", [cluster_pb2.Cluster.STATIC, cluster_pb2.Cluster.LOGICAL_DNS])
def test_static_and_logical_dns_resolve_once(kind: int) -> None:
    c = cluster("cache", eds=False, static=[6379])
    c.type = kind
    assert cluster_config(c, None).discovery == "static"

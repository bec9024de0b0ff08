"""The Proxy with run-time endpoint sets (EndpointsChanged) and active health checks."""

from __future__ import annotations

from dataclasses import replace

from metaprotocol.core import events as ev
from metaprotocol.core.config import ClusterConfig, Config, Endpoint, HealthCheck
from metaprotocol.core.mesh import PROBE_CONN_BASE
from metaprotocol.core.outputs import (
    CloseConnection,
    EndpointHealthChanged,
    OpenUpstream,
    Output,
    Write,
)
from metaprotocol.core.proxy import Proxy

from .helpers import config, req, resp

A, B = Endpoint("10.0.0.1", 9000), Endpoint("10.0.0.2", 9000)


def _opens(outputs: list[Output]) -> list[tuple[int, str]]:
    return [(o.conn, o.host) for o in outputs if isinstance(o, OpenUpstream)]


def _closes(outputs: list[Output]) -> list[int]:
    return [o.conn for o in outputs if isinstance(o, CloseConnection)]


def _send(proxy: Proxy, conn: int, rid: int, now: float) -> list[Output]:
    return proxy.handle(ev.DataReceived(conn, req(rid)), now)


def _dns_config(*endpoints: Endpoint) -> Config:
    cluster = ClusterConfig("main", endpoints, discovery="dns", max_connections_per_endpoint=1)
    return config(clusters=(cluster,))


def test_a_new_endpoint_set_keeps_remaining_connections_and_retires_removed_ones() -> None:
    proxy = Proxy(_dns_config(Endpoint("cache.internal", 9000)), now=0.0)
    proxy.handle(ev.Accepted(1, "main"), 0.0)
    proxy.handle(ev.EndpointsChanged("main", (A,)), 0.0)
    assert _opens(_send(proxy, 1, 1, 0.0)) == [(-1, "10.0.0.1")]
    proxy.handle(ev.UpstreamConnected(-1), 0.0)
    # A stays and B comes: A's connection is kept (no close), B is used for new requests.
    assert _closes(proxy.handle(ev.EndpointsChanged("main", (A, B)), 0.1)) == []
    assert _opens(_send(proxy, 1, 2, 0.1)) == [(-2, "10.0.0.2")]
    proxy.handle(ev.UpstreamConnected(-2), 0.1)
    # A goes while its request is in flight: nothing closes yet, nothing new goes there.
    assert _closes(proxy.handle(ev.EndpointsChanged("main", (B,)), 0.2)) == []
    for rid in (3, 4):
        out = _send(proxy, 1, rid, 0.2)
        assert [o.conn for o in out if isinstance(o, Write)] in ([-2], [])
    # A's answer still reaches the client, then A's connection closes.
    out = proxy.handle(ev.DataReceived(-1, resp(1)), 0.3)
    assert [o.conn for o in out if isinstance(o, Write)] == [1]
    assert _closes(out) == [-1]
    statuses = proxy.endpoint_statuses(0.3)
    assert [s.address for s in statuses] == ["10.0.0.2:9000"]


def test_a_reload_naming_the_same_hosts_keeps_the_discovered_set() -> None:
    names = _dns_config(Endpoint("cache.internal", 9000))
    proxy = Proxy(names, now=0.0)
    proxy.handle(ev.EndpointsChanged("main", (A, B)), 0.0)
    proxy.reload(names, 1.0)
    assert [s.address for s in proxy.endpoint_statuses(1.0)] == ["10.0.0.1:9000", "10.0.0.2:9000"]
    # Other names: the file's endpoints again (until discovery resolves them).
    other = _dns_config(Endpoint("other.internal", 9000))
    proxy.reload(other, 2.0)
    assert [s.address for s in proxy.endpoint_statuses(2.0)] == ["other.internal:9000"]


def test_an_unknown_cluster_or_the_same_set_changes_nothing() -> None:
    proxy = Proxy(_dns_config(A), now=0.0)
    assert proxy.handle(ev.EndpointsChanged("nope", (B,)), 0.0) == []
    assert proxy.handle(ev.EndpointsChanged("main", (A,)), 0.0) == []


def _checked(*endpoints: Endpoint) -> Proxy:
    check = HealthCheck(interval=5.0, timeout=1.0, unhealthy_threshold=2, healthy_threshold=1)
    cluster = ClusterConfig("main", endpoints, health_check=check)
    return Proxy(config(clusters=(cluster,)), now=0.0)


def test_probes_run_on_their_own_connections_and_take_endpoints_out() -> None:
    proxy = _checked(A, B, Endpoint("10.0.0.3", 9000))
    assert proxy.next_deadline() == 0.0  # the first probes are due at once
    out = proxy.handle(ev.TimePassed(), 0.0)
    probe_a, probe_b, probe_c = PROBE_CONN_BASE, PROBE_CONN_BASE - 1, PROBE_CONN_BASE - 2
    assert _opens(out) == [(probe_a, "10.0.0.1"), (probe_b, "10.0.0.2"), (probe_c, "10.0.0.3")]
    # The tutorial codec has no probe: a connect is the check (then the connection closes).
    assert _closes(proxy.handle(ev.UpstreamConnected(probe_b), 0.1)) == [probe_b]
    proxy.handle(ev.UpstreamConnected(probe_c), 0.1)
    out = proxy.handle(ev.UpstreamConnectFailed(probe_a, "refused"), 0.1)
    assert out == [EndpointHealthChanged("main", "10.0.0.1:9000", "unhealthy", 1)]
    # A is out: every request goes to B or C.
    proxy.handle(ev.Accepted(1, "main"), 0.2)
    hosts: set[str] = set()
    for rid in range(1, 7):
        hosts.update(host for _, host in _opens(_send(proxy, 1, rid, 0.2)))
    assert hosts == {"10.0.0.2", "10.0.0.3"}
    status = {s.address: s for s in proxy.endpoint_statuses(0.2)}
    assert status["10.0.0.1:9000"].health == "unhealthy"
    assert not status["10.0.0.1:9000"].healthy
    assert status["10.0.0.2:9000"].health == "healthy" and status["10.0.0.2:9000"].healthy
    # Its next probe passes (healthy_threshold 1): back in rotation.
    out = proxy.handle(ev.TimePassed(), 5.0)
    (reprobe,) = [c for c, host in _opens(out) if host == "10.0.0.1"]
    out = proxy.handle(ev.UpstreamConnected(reprobe), 5.1)
    assert EndpointHealthChanged("main", "10.0.0.1:9000", "healthy", 1) in out
    assert proxy.endpoint_statuses(5.1)[0].healthy


def test_panic_when_too_few_are_healthy_every_endpoint_serves() -> None:
    proxy = _checked(A, B)
    proxy.handle(ev.TimePassed(), 0.0)
    proxy.handle(ev.UpstreamConnectFailed(PROBE_CONN_BASE, "refused"), 0.1)
    proxy.handle(ev.UpstreamConnectFailed(PROBE_CONN_BASE - 1, "refused"), 0.1)
    assert all(s.health == "unhealthy" for s in proxy.endpoint_statuses(0.1))
    assert all(s.healthy for s in proxy.endpoint_statuses(0.1))  # panic: all in rotation
    proxy.handle(ev.Accepted(1, "main"), 0.2)
    assert [c for c, _ in _opens(_send(proxy, 1, 1, 0.2))] == [-1]  # sent, not refused


def test_a_reload_without_the_health_check_stops_probing() -> None:
    proxy = _checked(A)
    proxy.handle(ev.TimePassed(), 0.0)
    proxy.handle(ev.UpstreamConnected(PROBE_CONN_BASE), 0.1)  # passed, closed
    plain = replace(proxy.config, clusters=(ClusterConfig("main", (A,)),))
    proxy.reload(plain, 1.0)
    assert proxy.next_deadline() is None
    assert proxy.endpoint_statuses(1.0)[0].health == ""

"""What the core hands operators: connect failures and ejections as observer events (the
adapters log them), per-cluster request outcomes and latency, endpoint statuses."""

from __future__ import annotations

from metaprotocol.core.config import ClusterConfig, Endpoint, OutlierDetection
from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.events import UpstreamConnectFailed as ConnectFailedEvent
from metaprotocol.core.outputs import (
    CloseConnection,
    EndpointConnectFailed,
    EndpointEjected,
    OpenUpstream,
    Write,
)
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.stats import EndpointStatus
from metaprotocol.testing import Playbook

from .helpers import config, error_reply, req, resp

A = ("10.0.0.1", 9000)
CLUSTER = (("cluster", "main"),)


def _playbook(od: OutlierDetection | None, observers: bool) -> Playbook:
    clusters = (ClusterConfig("main", (Endpoint(*A),), outlier_detection=od),)
    proxy = Proxy(config(clusters=clusters), now=0.0, observe=observers)
    return Playbook(proxy, observers=True)


def test_connect_failure_and_ejection_are_reported_even_without_observers() -> None:
    od = OutlierDetection(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=100)
    pb = _playbook(od, observers=False)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    pb >> ConnectFailedEvent(-1, "refused")
    pb << EndpointConnectFailed("main", "10.0.0.1:9000", "refused")
    pb << EndpointEjected("main", "10.0.0.1:9000", 10.0, 1)
    pb << Write(1, error_reply(1, "connect_failure", "connect failed", 8))  # no OS error
    (status,) = pb.proxy.endpoint_statuses(pb.now)
    assert status == EndpointStatus("main", "10.0.0.1:9000", False, 10.0, 1, 0, 0, 0)
    pb.tick(4.0)
    assert pb.proxy.endpoint_statuses(pb.now)[0].ejected_for == 6.0
    pb.tick(6.0)
    assert pb.proxy.endpoint_statuses(pb.now)[0].healthy
    pb >> Closed(1)
    pb << None


def test_connect_timeout_is_reported() -> None:
    pb = _playbook(None, observers=False)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    pb.tick(30.0)  # past any connect_timeout
    pb << EndpointConnectFailed("main", "10.0.0.1:9000", "timed out")
    pb << CloseConnection(-1, flush=False)
    pb << Write(1, error_reply(1, "connect_failure", "connect timeout", 8))
    pb >> Closed(1)
    pb << None


def test_cluster_outcomes_and_latency_per_cluster() -> None:
    pb = _playbook(None, observers=False)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    (status,) = pb.proxy.endpoint_statuses(pb.now)
    assert (status.cx_active, status.rq_active, status.healthy) == (1, 1, True)
    pb.tick(0.3)
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))
    pb >> DataReceived(1, req(2))
    pb << Write(-1, req(2))
    pb >> DataReceived(-1, resp(2, status=1))  # an upstream error response
    pb << Write(1, resp(2, status=1))
    stats = pb.proxy.stats
    assert stats.counter("upstream_rq", (*CLUSTER, ("status", "ok"))) == 1
    assert stats.counter("upstream_rq", (*CLUSTER, ("status", "error"))) == 1
    snapshot = stats.snapshot()
    assert snapshot.counters[("upstream_rq", (*CLUSTER, ("status", "ok")))] == 1
    hist = snapshot.histograms[("upstream_rq_duration_seconds", CLUSTER)]
    assert hist.count == 2 and abs(hist.total - 0.3) < 1e-9
    pb >> Closed(1)
    pb >> Closed(-1)
    pb << None

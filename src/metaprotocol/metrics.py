"""Prometheus exposition of a stats snapshot, rendered by ``prometheus_client``.

``SnapshotCollector`` is a custom collector over the core's pure ``StatsSnapshot``: every
metric name becomes exactly one family (with all its label sets) carrying HELP and TYPE;
counters are exposed with ``_total``, every name with the ``metaprotocol_`` prefix. The
process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...) come
from the library's own ``ProcessCollector``, summed over the given processes (a supervisor
passes its workers' pids). ``with_endpoints`` adds the per-endpoint gauges of
``/clusters`` to a snapshot, so that a supervisor's sum carries them too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from metaprotocol.core.stats import EndpointStatus, Labels, StatsSnapshot

__all__ = [
    "CONTENT_TYPE",
    "HELP",
    "PREFIX",
    "SnapshotCollector",
    "render_prometheus",
    "with_endpoints",
]

PREFIX = "metaprotocol_"
# What generate_latest writes; every Prometheus release reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What each metric means, by its unprefixed name. A name missing here (a third-party filter's
# counter, say) still gets a HELP line, a generic one.
HELP: dict[str, str] = {
    # per listener
    "active_requests": "Requests decoded and not yet answered.",
    "cx_destroy_local_with_active_rq": "Client connections the proxy closed with requests "
    "in flight.",
    "cx_destroy_remote_with_active_rq": "Client connections the client closed with requests "
    "in flight.",
    "downstream_cx_active": "Open client connections.",
    "downstream_cx_total": "Client connections accepted.",
    "downstream_cx_ssl_handshake_error": "Clients of a TLS listener whose handshake failed "
    "(never served).",
    "heartbeat": "Heartbeats answered by the proxy itself.",
    "idle_timeout": "Client connections closed for being idle.",
    "local_response_error": "Error replies the proxy built itself (no route, over limit, ...).",
    "local_response_success": "Successful replies the proxy built itself.",
    "mirror_failed": "Mirrored copies that could not be sent.",
    "request": "Requests decoded from clients.",
    "request_decoding_error": "Client bytes that did not decode as a request.",
    "request_decoding_success": "Requests decoded successfully.",
    "request_merged": "Requests that travelled upstream inside a merged pipeline message.",
    "request_oneway": "Oneway requests (no answer expected).",
    "request_twoway": "Requests expecting an answer.",
    "response": "Responses relayed to clients.",
    "response_error": "Error responses relayed from upstreams.",
    "response_success": "Successful responses relayed from upstreams.",
    "route_not_found": "Requests no route matched.",
    "request_duration_seconds": "Time from a request's decode to its answer, per listener.",
    # per route
    "route_hit": "Requests that matched the route.",
    # per cluster
    "mirror_sent": "Mirrored copies sent to the cluster.",
    "outlier_ejection": "Endpoints ejected by outlier detection.",
    "response_decoding_error": "Upstream bytes that did not decode as a response.",
    "response_dropped": "Upstream responses nobody waited for any more.",
    "response_mutation_failed": "Responses the configured mutation could not be applied to.",
    "upstream_cx_active": "Open upstream connections.",
    "upstream_cx_connect_fail": "Upstream connections that failed to connect.",
    "upstream_cx_connect_timeout": "Upstream connections that timed out connecting.",
    "upstream_cx_overflow": "Times the max_connections circuit breaker held a connection back.",
    "upstream_cx_total": "Upstream connections opened.",
    "upstream_flow_control_paused": "Times an upstream's full write buffer paused its clients.",
    "upstream_rq_pending_overflow": "Requests refused by the max_pending_requests breaker.",
    "upstream_rq_retry": "Request retries.",
    "upstream_rq_timeout": "Requests that timed out upstream.",
    "upstream_rq": "Requests routed to the cluster, by how they ended (ok, error: an upstream "
    "error response, local_error: the proxy answered, oneway, abandoned: the client left).",
    "upstream_rq_duration_seconds": "Time from a request's decode to its answer, per cluster.",
    # per endpoint (summed over workers under a supervisor)
    "upstream_endpoint_healthy": "1 while the endpoint is in rotation, 0 while ejected "
    "(with --workers: how many workers have it in rotation).",
    "upstream_endpoint_ejections": "Times outlier detection ejected the endpoint.",
    "upstream_endpoint_cx_active": "Open connections to the endpoint.",
    "upstream_endpoint_rq_active": "Requests in flight to the endpoint.",
    # proxy-wide
    "codec_error": "Codec calls that failed (the request or connection got an error).",
    "config_reload": "Configuration reloads applied.",
    "fault_aborted": "Requests aborted by the fault filter.",
    "fault_delayed": "Requests delayed by the fault filter.",
    "global_ratelimit_error": "Global rate-limit lookups that failed.",
    "global_ratelimit_ok": "Requests the global rate limit let through.",
    "global_ratelimit_over_limit": "Requests the global rate limit refused.",
    "global_ratelimit_redis_errors": "Global rate-limit Redis calls that failed.",
    "local_ratelimit_ok": "Requests the local rate limit let through.",
    "local_ratelimit_over_limit": "Requests the local rate limit refused.",
    # supervisor (--workers)
    "workers": "Worker processes whose stats are included.",
    "workers_unreachable": "Worker processes that did not answer the supervisor.",
    "workers_restarted": "Worker processes restarted after they died.",
}

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
# Process metrics that describe the process serving the exposition rather than add up.
_NOT_SUMMED = frozenset({"process_start_time_seconds", "process_max_fds"})


def _metric_name(name: str) -> str:
    return PREFIX + _BAD_NAME_CHARS.sub("_", name)


def _label_name(name: str) -> str:
    cleaned = _BAD_LABEL_CHARS.sub("_", name)
    return "_" + cleaned if cleaned[:1].isdigit() or not cleaned else cleaned


def _labels(labels: Labels) -> dict[str, str]:
    return {_label_name(k): v for k, v in labels}


def _help(name: str, kind: str) -> str:
    return HELP.get(name) or f"metaprotocol {kind} {name}."


class SnapshotCollector(Collector):
    """Collects one snapshot (and the process metrics of ``pids``) as Prometheus families."""

    def __init__(self, snapshot: StatsSnapshot, pids: Sequence[int] = ()) -> None:
        self._snapshot = snapshot
        self._pids = tuple(pids) or (os.getpid(),)

    def collect(self) -> Iterator[Metric]:
        yield from self._stats()
        yield from _process_metrics(self._pids)

    def _stats(self) -> Iterator[Metric]:
        snap = self._snapshot
        families: dict[str, Metric] = {}

        def family(name: str, kind: str) -> Metric:
            metric = _metric_name(name)
            if kind == "counter" and metric.endswith("_total"):
                metric = metric[: -len("_total")]
            found = families.get(metric)
            if found is not None and found.type != kind:
                # One name used for two kinds: keep both, the later one renamed as a whole.
                metric = f"{metric}_{kind}"
                found = families.get(metric)
            if found is None:
                found = families[metric] = Metric(metric, _help(name, kind), kind)
            return found

        for (name, labels), count in sorted(snap.counters.items()):
            fam = family(name, "counter")
            fam.add_sample(fam.name + "_total", _labels(labels), count)
        for (name, labels), value in sorted(snap.gauges.items()):
            fam = family(name, "gauge")
            fam.add_sample(fam.name, _labels(labels), value)
        for (name, labels), hist in sorted(snap.histograms.items(), key=lambda kv: kv[0]):
            fam = family(name, "histogram")
            base = _labels(labels)
            for bound, cumulative in hist.cumulative():
                le = "+Inf" if math.isinf(bound) else repr(float(bound))
                fam.add_sample(fam.name + "_bucket", {**base, "le": le}, cumulative)
            fam.add_sample(fam.name + "_sum", base, hist.total)
            fam.add_sample(fam.name + "_count", base, hist.count)
        yield from families.values()


def _process_metrics(pids: Sequence[int]) -> Iterator[Metric]:
    """The library's process metrics of each pid, summed per sample (CPU, memory, fds);
    start time and fd limit are the first pid's."""
    merged: dict[str, Metric] = {}
    for index, pid in enumerate(pids):
        collector = ProcessCollector(pid=partial(int, pid), registry=None)
        for fam in collector.collect():
            have = merged.get(fam.name)
            if have is None:
                merged[fam.name] = fam
                continue
            if fam.name in _NOT_SUMMED or index == 0:
                continue
            for i, (mine, theirs) in enumerate(zip(have.samples, fam.samples, strict=False)):
                have.samples[i] = mine._replace(value=mine.value + theirs.value)
    yield from merged.values()


def render_prometheus(snapshot: StatsSnapshot, pids: Sequence[int] = ()) -> bytes:
    """The snapshot (and process metrics) in the Prometheus text format, version 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, pids))
    return generate_latest(registry)


def with_endpoints(snapshot: StatsSnapshot, statuses: Iterable[EndpointStatus]) -> StatsSnapshot:
    """``snapshot`` plus the per-endpoint gauges and ejection counter of ``statuses``."""
    gauges = dict(snapshot.gauges)
    counters = dict(snapshot.counters)
    for st in statuses:
        labels: Labels = (("cluster", st.cluster), ("endpoint", st.address))
        gauges[("upstream_endpoint_healthy", labels)] = 1 if st.healthy else 0
        gauges[("upstream_endpoint_cx_active", labels)] = st.cx_active
        gauges[("upstream_endpoint_rq_active", labels)] = st.rq_active
        counters[("upstream_endpoint_ejections", labels)] = st.ejections
    return StatsSnapshot(counters=counters, gauges=gauges, histograms=snapshot.histograms)

"""Counters, gauges and histograms as pure data; the admin endpoint renders them.

A metric is identified by its name and a sorted tuple of ``(label, value)``
pairs, e.g. ``("request", (("listener", "redis"),))``. Names are unprefixed;
exporters add ``metaprotocol_``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

__all__ = [
    "DURATION_BUCKETS",
    "ClusterCounters",
    "CounterBlock",
    "EndpointStatus",
    "Histogram",
    "Labels",
    "ListenerCounters",
    "RouteCounters",
    "Stats",
    "StatsSnapshot",
]

Labels = tuple[tuple[str, str], ...]

# Seconds; upper bounds of request-duration histogram buckets (+Inf is implicit).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def observe_many(self, value: float, n: int) -> None:
        """``n`` observations of the same ``value`` (the requests of a merged message)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n
        self.count += n

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper_bound, cumulative_count)`` pairs, the last bound being +inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One upstream endpoint as the admin's ``/clusters`` and the per-endpoint gauges show it.

    ``healthy`` is False while the endpoint is out of rotation: outlier detection keeps it
    ejected (for ``ejected_for`` more seconds), or active health checking has it out;
    ``ejections`` counts every ejection so far. ``health`` is the active health check's
    verdict (``healthy``, ``unhealthy``, ``pending``), "" for a cluster without one."""

    cluster: str
    address: str
    healthy: bool
    ejected_for: float
    ejections: int
    consecutive_failures: int
    cx_active: int
    rq_active: int
    health: str = ""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    counters: dict[tuple[str, Labels], int]
    gauges: dict[tuple[str, Labels], float]
    histograms: dict[tuple[str, Labels], Histogram]


_B = TypeVar("_B", bound="CounterBlock")


class Stats:
    """Mutable store the core updates; ``snapshot()`` gives a copy for exporters."""

    __slots__ = ("blocks", "counters", "gauges", "histograms", "tallies")

    def __init__(self) -> None:
        self.blocks: dict[tuple[type[CounterBlock], Labels], CounterBlock] = {}
        self.counters: dict[tuple[str, Labels], int] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], Histogram] = {}
        # Counters split by one more label whose values are only known as they come (a
        # request's status): (name, labels, label) -> label value -> count.
        self.tallies: dict[tuple[str, Labels, str], dict[str, int]] = {}

    def block(self, kind: type[_B], labels: Labels) -> _B:
        """The counter block of ``kind`` for ``labels`` (made once, kept across reloads)."""
        key = (kind, labels)
        found = self.blocks.get(key)
        if found is None:
            found = self.blocks[key] = kind()
        assert isinstance(found, kind)
        return found

    def tally(self, name: str, labels: Labels, label: str) -> dict[str, int]:
        """The counters of ``name`` for ``labels``, one per value of ``label``, as a dict
        the hot path updates in place (made once, kept across reloads)."""
        key = (name, labels, label)
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = {}
        return found

    def histogram(self, name: str, labels: Labels) -> Histogram:
        key = (name, labels)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram()
        return hist

    def inc(self, name: str, labels: Labels = (), n: int = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + n

    def counter(self, name: str, labels: Labels = ()) -> int:
        for (_, block_labels), block in self.blocks.items():
            if block_labels == labels and name in block.FIELDS:
                value: int = getattr(block, name)
                return value
        return self.counters.get((name, labels), 0) + self._tallied(name, labels)

    def _tallied(self, name: str, labels: Labels) -> int:
        if not labels:
            return 0
        label, value = labels[-1]
        counts = self.tallies.get((name, labels[:-1], label))
        return 0 if counts is None else counts.get(value, 0)

    def set_gauge(self, name: str, labels: Labels, value: float) -> None:
        self.gauges[(name, labels)] = value

    def gauge(self, name: str, labels: Labels = ()) -> float:
        if (name, labels) not in self.gauges:
            return self.counter(name, labels)
        return self.gauges[(name, labels)]

    def snapshot(self) -> StatsSnapshot:
        counters = dict(self.counters)
        gauges = dict(self.gauges)
        for (kind, labels), block in self.blocks.items():
            for name, value in block.items():
                if name in kind.GAUGES:
                    gauges[(name, labels)] = value
                else:
                    counters[(name, labels)] = value
        for (name, labels, label), counts in self.tallies.items():
            for label_value, count in counts.items():
                counters[(name, (*labels, (label, label_value)))] = count
        return StatsSnapshot(
            counters=counters,
            gauges=gauges,
            histograms={
                k: Histogram(h.bounds, list(h.counts), h.total, h.count)
                for k, h in self.histograms.items()
            },
        )


class CounterBlock:
    """A group of counters (and gauges) for one label set, as plain int attributes.

    The hot path increments attributes (``block.request += 1``), the cheapest update
    CPython offers; exporters read them through ``Stats.snapshot``. ``FIELDS`` names the
    attributes (not ``__slots__``: mypyc-compiled classes do not expose that).
    """

    FIELDS: ClassVar[tuple[str, ...]] = ()
    GAUGES: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def items(self) -> list[tuple[str, int]]:
        return [(name, getattr(self, name)) for name in self.FIELDS]


class ListenerCounters(CounterBlock):
    """Per listener: the original MetaProtocol counters plus ours."""

    FIELDS = (
        "active_requests",
        "cx_destroy_local_with_active_rq",
        "cx_destroy_remote_with_active_rq",
        "downstream_auth_failed",
        "downstream_cx_active",
        "downstream_cx_output_overflow",
        "downstream_cx_total",
        "filter_error",
        "heartbeat",
        "idle_timeout",
        "local_response_error",
        "local_response_success",
        "mirror_failed",
        "request",
        "request_decoding_error",
        "request_decoding_success",
        "request_merged",
        "request_oneway",
        "request_split",
        "request_twoway",
        "response",
        "response_error",
        "response_success",
        "route_not_found",
    )
    active_requests: int
    cx_destroy_local_with_active_rq: int
    cx_destroy_remote_with_active_rq: int
    downstream_auth_failed: int  # credentials a client sent were refused (a wrong password)
    downstream_cx_active: int
    downstream_cx_output_overflow: int  # closed: unread replies above output_buffer_limit
    downstream_cx_total: int
    filter_error: int  # a filter raised: its request got an internal-error reply
    heartbeat: int
    idle_timeout: int
    local_response_error: int
    local_response_success: int
    mirror_failed: int
    request: int
    request_decoding_error: int
    request_decoding_success: int
    request_merged: int  # requests that travelled inside a merged pipeline message
    request_oneway: int
    request_split: int  # requests the codec split into parts for several targets (fan-out)
    request_twoway: int
    response: int
    response_error: int
    response_success: int
    route_not_found: int
    GAUGES = frozenset({"active_requests", "downstream_cx_active"})


class ClusterCounters(CounterBlock):
    """Per cluster: upstream connections, failures, retries, overflows."""

    FIELDS = (
        "mirror_sent",
        "outlier_ejection",
        "redis_cluster_ask",
        "redis_cluster_moved",
        "response_decoding_error",
        "response_dropped",
        "response_mutation_failed",
        "upstream_cx_active",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_destroy_with_active_rq",
        "upstream_cx_overflow",
        "upstream_cx_total",
        "upstream_flow_control_paused",
        "upstream_rq_pending_overflow",
        "upstream_rq_resent",
        "upstream_rq_retry",
        "upstream_rq_timeout",
    )
    mirror_sent: int
    outlier_ejection: int
    redis_cluster_ask: int  # -ASK answers followed (ASKING + the command on the named node)
    redis_cluster_moved: int  # -MOVED answers followed (resent, slot map refetched)
    response_decoding_error: int
    response_dropped: int
    response_mutation_failed: int
    upstream_cx_active: int
    upstream_cx_connect_fail: int
    upstream_cx_connect_timeout: int
    # reset (closed by the upstream, a bad response, a timeout, answers nobody reads) while
    # it still carried requests
    upstream_cx_destroy_with_active_rq: int
    upstream_cx_overflow: int
    upstream_cx_total: int
    upstream_flow_control_paused: int
    upstream_rq_pending_overflow: int
    upstream_rq_resent: int  # sent again on a fresh connection after such a reset (once, if safe)
    upstream_rq_retry: int
    upstream_rq_timeout: int
    GAUGES = frozenset({"upstream_cx_active"})


class RouteCounters(CounterBlock):
    FIELDS = ("route_hit",)
    route_hit: int

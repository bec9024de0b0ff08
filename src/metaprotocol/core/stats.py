"""Counters, gauges and histograms as pure data; the admin endpoint renders them.

A metric is identified by its name and a sorted tuple of ``(label, value)``
pairs, e.g. ``("request", (("listener", "redis"),))``. Names are unprefixed;
exporters add ``metaprotocol_``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["DURATION_BUCKETS", "Histogram", "Labels", "Stats", "StatsSnapshot"]

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

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper_bound, cumulative_count)`` pairs, the last bound being +inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    counters: dict[tuple[str, Labels], int]
    gauges: dict[tuple[str, Labels], float]
    histograms: dict[tuple[str, Labels], Histogram]


class Stats:
    """Mutable store the core updates; ``snapshot()`` gives a copy for exporters."""

    __slots__ = ("counters", "gauges", "histograms")

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], int] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], Histogram] = {}

    def inc(self, name: str, labels: Labels = (), n: int = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + n

    def counter(self, name: str, labels: Labels = ()) -> int:
        return self.counters.get((name, labels), 0)

    def set_gauge(self, name: str, labels: Labels, value: float) -> None:
        self.gauges[(name, labels)] = value

    def add_gauge(self, name: str, labels: Labels, delta: float) -> None:
        key = (name, labels)
        self.gauges[key] = self.gauges.get(key, 0) + delta

    def gauge(self, name: str, labels: Labels = ()) -> float:
        return self.gauges.get((name, labels), 0)

    def observe(self, name: str, labels: Labels, value: float) -> None:
        key = (name, labels)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram()
        hist.observe(value)

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            counters=dict(self.counters),
            gauges=dict(self.gauges),
            histograms={
                k: Histogram(h.bounds, list(h.counts), h.total, h.count)
                for k, h in self.histograms.items()
            },
        )

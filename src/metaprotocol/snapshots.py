"""Stats snapshots as JSON (the admin's ``/stats/json``) and the sum of several of them.

With ``metaprotocol run --workers N`` every worker keeps its own stats; the supervisor's admin
endpoint fetches each worker's ``/stats/json`` and serves their sum, so counters, gauges
and histograms describe the whole proxy rather than one process.

The JSON form::

    {"counters":   [{"name": "request", "labels": [["listener", "redis"]], "value": 7}],
     "gauges":     [{"name": "downstream_cx_active", "labels": [...], "value": 2}],
     "histograms": [{"name": "request_duration_seconds", "labels": [...],
                     "bounds": [0.0001, ...], "counts": [...], "total": 0.5, "count": 7}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from metaprotocol.core.stats import Histogram, Labels, StatsSnapshot

__all__ = ["merge_snapshots", "snapshot_from_json", "snapshot_to_json"]


def snapshot_to_json(snapshot: StatsSnapshot) -> dict[str, Any]:
    """A JSON-ready mapping of ``snapshot`` (series sorted by name, then labels)."""
    return {
        "counters": [
            {"name": name, "labels": [list(pair) for pair in labels], "value": value}
            for (name, labels), value in sorted(snapshot.counters.items())
        ],
        "gauges": [
            {"name": name, "labels": [list(pair) for pair in labels], "value": value}
            for (name, labels), value in sorted(snapshot.gauges.items())
        ],
        "histograms": [
            {
                "name": name,
                "labels": [list(pair) for pair in labels],
                "bounds": list(hist.bounds),
                "counts": list(hist.counts),
                "total": hist.total,
                "count": hist.count,
            }
            for (name, labels), hist in sorted(snapshot.histograms.items(), key=lambda kv: kv[0])
        ],
    }


def _key(entry: Mapping[str, Any]) -> tuple[str, Labels]:
    name = entry["name"]
    labels = entry["labels"]
    if not isinstance(name, str) or not isinstance(labels, list):
        raise ValueError(f"stats json: bad series {entry!r}")
    pairs: list[tuple[str, str]] = []
    for pair in labels:
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        if not ok:
            raise ValueError(f"stats json: bad label {pair!r} in {name!r}")
        pairs.append((pair[0], pair[1]))
    return name, tuple(pairs)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"stats json: {what} is not a number: {value!r}")
    return value


def snapshot_from_json(data: Any) -> StatsSnapshot:
    """The ``StatsSnapshot`` a ``snapshot_to_json`` mapping stands for; ValueError if it is
    not one."""
    if not isinstance(data, dict):
        raise ValueError("stats json: not an object")
    counters: dict[tuple[str, Labels], int] = {}
    gauges: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], Histogram] = {}
    for entry in data.get("counters", []):
        counters[_key(entry)] = int(_number(entry["value"], "counter"))
    for entry in data.get("gauges", []):
        gauges[_key(entry)] = _number(entry["value"], "gauge")
    for entry in data.get("histograms", []):
        bounds = tuple(float(_number(b, "bound")) for b in entry["bounds"])
        counts = [int(_number(c, "bucket")) for c in entry["counts"]]
        if len(counts) != len(bounds) + 1:
            raise ValueError(f"stats json: {entry['name']!r} needs one bucket per bound, plus one")
        total = float(_number(entry["total"], "sum"))
        count = int(_number(entry["count"], "count"))
        histograms[_key(entry)] = Histogram(bounds, counts, total, count)
    return StatsSnapshot(counters=counters, gauges=gauges, histograms=histograms)


def merge_snapshots(snapshots: Iterable[StatsSnapshot]) -> StatsSnapshot:
    """The sum of ``snapshots``: counters and gauges add up per series, histograms add up
    bucket by bucket. Histograms of one series must share their bounds (ValueError)."""
    counters: dict[tuple[str, Labels], int] = {}
    gauges: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], Histogram] = {}
    for snapshot in snapshots:
        for key, count in snapshot.counters.items():
            counters[key] = counters.get(key, 0) + count
        for key, value in snapshot.gauges.items():
            gauges[key] = gauges.get(key, 0) + value
        for key, hist in snapshot.histograms.items():
            have = histograms.get(key)
            if have is None:
                histograms[key] = Histogram(hist.bounds, list(hist.counts), hist.total, hist.count)
                continue
            if have.bounds != hist.bounds:
                raise ValueError(f"stats: histogram {key[0]!r} has different bounds per worker")
            have.counts = [a + b for a, b in zip(have.counts, hist.counts, strict=True)]
            have.total += hist.total
            have.count += hist.count
    return StatsSnapshot(counters=counters, gauges=gauges, histograms=histograms)

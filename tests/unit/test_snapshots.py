"""Stats snapshots as JSON (``/stats/json``) and their sum over ``--workers``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metaprotocol.admin import AdminApp
from metaprotocol.core.stats import Stats, StatsSnapshot
from metaprotocol.snapshots import merge_snapshots, snapshot_from_json, snapshot_to_json


def _worker(requests: int, active: int, durations: list[float]) -> StatsSnapshot:
    stats = Stats()
    stats.inc("request", (("listener", "redis"),), requests)
    stats.gauges[("downstream_cx_active", (("listener", "redis"),))] = active
    for value in durations:
        stats.histogram("request_duration_seconds", (("listener", "redis"),)).observe(value)
    return stats.snapshot()


def test_json_round_trip_keeps_every_series() -> None:
    snapshot = _worker(3, 2, [0.0002, 0.7, 20.0])
    again = snapshot_from_json(json.loads(json.dumps(snapshot_to_json(snapshot))))
    assert again.counters == snapshot.counters
    assert again.gauges == snapshot.gauges
    key = ("request_duration_seconds", (("listener", "redis"),))
    have, want = again.histograms[key], snapshot.histograms[key]
    assert (have.bounds, have.counts, have.total, have.count) == (
        want.bounds,
        want.counts,
        want.total,
        want.count,
    )


def test_merge_adds_counters_gauges_and_buckets() -> None:
    merged = merge_snapshots([_worker(3, 2, [0.0002, 0.7]), _worker(4, 1, [0.7, 20.0])])
    labels = (("listener", "redis"),)
    assert merged.counters[("request", labels)] == 7
    assert merged.gauges[("downstream_cx_active", labels)] == 3
    hist = merged.histograms[("request_duration_seconds", labels)]
    assert hist.count == 4 and hist.total == pytest.approx(21.4002)
    assert sum(hist.counts) == 4 and hist.counts[-1] == 1  # 20 s is past the last bound
    assert merge_snapshots([]).counters == {}


def test_merge_refuses_histograms_with_other_bounds() -> None:
    one = _worker(1, 0, [0.1])
    other = snapshot_from_json(
        {
            "histograms": [
                {
                    "name": "request_duration_seconds",
                    "labels": [["listener", "redis"]],
                    "bounds": [1.0],
                    "counts": [1, 0],
                    "total": 0.1,
                    "count": 1,
                }
            ]
        }
    )
    with pytest.raises(ValueError, match="different bounds"):
        merge_snapshots([one, other])


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"counters": [{"name": 1, "labels": [], "value": 1}]},
        {"counters": [{"name": "x", "labels": [["a"]], "value": 1}]},
        {"gauges": [{"name": "x", "labels": [], "value": "1"}]},
        {"counters": [{"name": "x", "labels": [], "value": True}]},
        {
            "histograms": [
                {"name": "h", "labels": [], "bounds": [1.0], "counts": [1], "total": 0, "count": 1}
            ]
        },
    ],
)
def test_bad_json_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError, match="stats json"):
        snapshot_from_json(data)


def test_admin_serves_stats_json() -> None:
    snapshot = _worker(5, 1, [0.01])
    app = AdminApp(ready=lambda: True, snapshot=lambda: snapshot, config_raw=dict)
    status, content_type, body = app.respond("GET", "/stats/json")
    assert (status, content_type) == (200, "application/json")
    assert snapshot_from_json(json.loads(body)).counters == snapshot.counters

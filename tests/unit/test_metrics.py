"""The Prometheus collector and the ``/clusters`` view without sockets."""

from __future__ import annotations

import json
import re
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.admin import AdminApp
from metaprotocol.core.stats import EndpointStatus, Stats, StatsSnapshot
from metaprotocol.endpoints import (
    clusters_json,
    clusters_text,
    merge_statuses,
    statuses_from_json,
)
from metaprotocol.metrics import render_prometheus, with_endpoints


def _families(snapshot: StatsSnapshot) -> dict[str, object]:
    text = render_prometheus(snapshot).decode()
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("meta")]
    assert max(Counter(f.name for f in families).values()) == 1
    helps = re.findall(r"^# HELP (metaprotocol_\S+) (.+)$", text, re.M)
    assert len(helps) == len(families) and all(doc for _, doc in helps)
    return {f.name: f for f in families}


def test_every_label_set_of_a_name_lands_in_one_family() -> None:
    stats = Stats()
    for listener in ("a", "b", "c"):
        labels = (("listener", listener),)
        stats.inc("request", labels, 2)
        stats.gauges[("downstream_cx_active", labels)] = 1
        stats.histogram("request_duration_seconds", labels).observe(0.01)
    families = _families(stats.snapshot())
    assert set(families) == {
        "metaprotocol_request",
        "metaprotocol_downstream_cx_active",
        "metaprotocol_request_duration_seconds",
    }
    hist = families["metaprotocol_request_duration_seconds"]
    counts = [s for s in hist.samples if s.name.endswith("_count")]  # type: ignore[attr-defined]
    assert {s.labels["listener"] for s in counts} == {"a", "b", "c"}


def test_a_name_used_as_counter_and_gauge_becomes_two_whole_families() -> None:
    stats = Stats()
    stats.inc("load", (("listener", "a"),))
    stats.gauges[("load", (("listener", "a"),))] = 3
    stats.gauges[("load", (("listener", "b"),))] = 4
    families = _families(stats.snapshot())
    assert families["metaprotocol_load"].type == "counter"  # type: ignore[attr-defined]
    gauge = families["metaprotocol_load_gauge"]
    assert [s.value for s in gauge.samples] == [3, 4]  # type: ignore[attr-defined]


def test_unknown_names_still_get_help_and_total_is_not_doubled() -> None:
    stats = Stats()
    stats.inc("my_filter_thing", (("listener", "a"),))
    stats.inc("downstream_cx_total", (("listener", "a"),))
    text = render_prometheus(stats.snapshot()).decode()
    assert "# HELP metaprotocol_my_filter_thing_total metaprotocol counter my_filter_thing." in text
    assert 'metaprotocol_downstream_cx_total{listener="a"} 1.0' in text
    assert "_total_total" not in text


def test_tallies_split_a_counter_by_a_label() -> None:
    stats = Stats()
    outcomes = stats.tally("upstream_rq", (("cluster", "c"),), "status")
    outcomes["ok"] = 5
    outcomes["local_error"] = 1
    assert stats.tally("upstream_rq", (("cluster", "c"),), "status") is outcomes
    assert stats.counter("upstream_rq", (("cluster", "c"), ("status", "ok"))) == 5
    rq = _families(stats.snapshot())["metaprotocol_upstream_rq"]
    values = {s.labels["status"]: s.value for s in rq.samples}  # type: ignore[attr-defined]
    assert values == {"ok": 5, "local_error": 1}


STATUSES = [
    EndpointStatus("web", "10.0.0.1:80", True, 0.0, 0, 0, 2, 1),
    EndpointStatus("web", "10.0.0.2:80", False, 12.5, 3, 1, 0, 0),
    EndpointStatus("db", "10.0.0.3:6379", True, 0.0, 1, 0, 4, 0),
]


def test_endpoint_gauges() -> None:
    families = _families(with_endpoints(Stats().snapshot(), STATUSES))
    healthy = families["metaprotocol_upstream_endpoint_healthy"]
    assert [(s.labels["endpoint"], s.value) for s in healthy.samples] == [  # type: ignore[attr-defined]
        ("10.0.0.3:6379", 1),
        ("10.0.0.1:80", 1),
        ("10.0.0.2:80", 0),
    ]
    ejections = families["metaprotocol_upstream_endpoint_ejections"]
    assert sum(s.value for s in ejections.samples) == 4  # type: ignore[attr-defined]
    cx = families["metaprotocol_upstream_endpoint_cx_active"]
    assert sum(s.value for s in cx.samples) == 6  # type: ignore[attr-defined]


def test_clusters_text_json_and_merge() -> None:
    text = clusters_text(STATUSES)
    assert "web::10.0.0.2:80::health_flags::/failed_outlier_check\n" in text
    assert "web::10.0.0.1:80::cx_active::2\n" in text
    assert "db::10.0.0.3:6379::ejections::1\n" in text
    data = clusters_json(STATUSES)
    assert [c["name"] for c in data["clusters"]] == ["web", "db"]
    assert statuses_from_json(json.loads(json.dumps(data))) == STATUSES
    other = [
        EndpointStatus("web", "10.0.0.1:80", False, 3.0, 1, 2, 1, 1),
        EndpointStatus("web", "10.0.0.9:80", True, 0.0, 0, 0, 1, 0),
    ]
    merged = merge_statuses([STATUSES, other])
    assert merged[0] == EndpointStatus("web", "10.0.0.1:80", False, 3.0, 1, 2, 3, 2)
    assert [s.address for s in merged] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:6379",
                                           "10.0.0.9:80"]  # fmt: skip


def test_bad_clusters_json_is_a_value_error() -> None:
    for bad in ({}, {"clusters": [{"name": "x"}]}, {"clusters": [{"name": "x", "endpoints": [1]}]}):
        try:
            statuses_from_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_admin_routes_clusters() -> None:
    app = AdminApp(
        ready=lambda: True,
        snapshot=lambda: Stats().snapshot(),
        config_raw=dict,
        endpoints=lambda: STATUSES,
    )
    status, ctype, body = app.respond("GET", "/clusters")
    assert (status, ctype) == (200, "text/plain; charset=utf-8")
    assert body.decode() == clusters_text(STATUSES)
    status, ctype, body = app.respond("GET", "/clusters?format=json")
    assert (status, ctype) == (200, "application/json")
    assert statuses_from_json(json.loads(body)) == STATUSES

"""The admin's ``/stats/prometheus`` and ``/clusters`` with two listeners and three clusters.

Real HTTP upstreams (http.server) and httpx as the client; the exposition is checked with
prometheus_client's own parser: one family per metric, each with HELP and TYPE, the
per-cluster request counts and latency histogram, per-route hits, per-endpoint gauges and
the process metrics. The Grafana dashboard in examples/ only queries names that exist.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.configfile import parse_config
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import DEADLINE, free_port, http_server, scrape_admin

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana-dashboard.json"


@pytest.fixture
def running(adapter: str) -> Iterator[RunningProxy]:
    dead = free_port()  # nothing listens there: every request to cluster "gone" fails
    with http_server(name="a") as a, http_server(name="b") as b:
        config = parse_config(
            {
                "admin": {"address": "127.0.0.1:0"},
                "listeners": [
                    {"name": "front", "address": "127.0.0.1:0", "codec": "http1", "routes": [
                        {"name": "to-a", "match": {"metadata": {":path": {"prefix": "/who"}}},
                         "route": {"cluster": "alpha"}},
                        {"name": "to-gone", "match": {"metadata": {":path": {"prefix": "/x"}}},
                         "route": {"cluster": "gone"}},
                    ]},
                    {"name": "back", "address": "127.0.0.1:0", "codec": "http1", "routes": [
                        {"name": "to-b", "route": {"cluster": "beta"}},
                    ]},
                ],
                "clusters": [
                    {"name": "alpha", "endpoints": [f"127.0.0.1:{a.server_address[1]}"]},
                    {"name": "beta", "endpoints": [f"127.0.0.1:{b.server_address[1]}"]},
                    {"name": "gone", "endpoints": [f"127.0.0.1:{dead}"],
                     "outlier_detection": {"consecutive_failures": 2,
                                           "max_ejection_percent": 100}},
                ],
            }
        )  # fmt: skip
        with start_proxy(config, adapter) as proxy:
            front = f"http://127.0.0.1:{proxy.ports['front']}"
            back = f"http://127.0.0.1:{proxy.ports['back']}"
            with httpx.Client(timeout=DEADLINE) as client:
                for _ in range(3):
                    assert client.get(front + "/whoami").status_code == 200
                for _ in range(2):
                    assert client.get(back + "/whoami").status_code == 200
                for _ in range(3):  # connect failures; the second ejects the endpoint
                    assert client.get(front + "/x").status_code in (502, 503)
            yield proxy


def _families(text: str) -> dict[str, Any]:
    families = list(text_string_to_metric_families(text))
    names = Counter(f.name for f in families)
    assert [n for n, count in names.items() if count > 1] == []
    return {f.name: f for f in families}


def test_one_family_per_metric_with_help_and_type(running: RunningProxy) -> None:
    assert running.admin_address is not None
    text = scrape_admin(running.admin_address)
    families = _families(text)
    helps = Counter(re.findall(r"^# HELP (\S+) ", text, re.M))
    types = Counter(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for name, family in families.items():
        exposed = name + "_total" if family.type == "counter" else name
        assert helps[exposed] == 1 and types[exposed] == 1, name
        assert family.documentation, name
    assert all(count == 1 for count in helps.values()) and helps.keys() == types.keys()
    # The old renaming on a second label set must be gone.
    assert not [n for n in families if n.endswith(("_gauge", "_histogram"))]

    rq = families["metaprotocol_upstream_rq"]
    assert rq.type == "counter"
    counts = {(s.labels["cluster"], s.labels["status"]): s.value for s in rq.samples}
    assert counts[("alpha", "ok")] == 3 and counts[("beta", "ok")] == 2
    assert counts[("gone", "local_error")] == 3

    hist = families["metaprotocol_upstream_rq_duration_seconds"]
    assert hist.type == "histogram"
    per_cluster = {s.labels["cluster"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert per_cluster == {"alpha": 3, "beta": 2, "gone": 3}
    listener_hist = families["metaprotocol_request_duration_seconds"]
    assert {s.labels["listener"] for s in listener_hist.samples} == {"front", "back"}

    hits = {s.labels["route"]: s.value for s in families["metaprotocol_route_hit"].samples}
    assert hits == {"to-a": 3, "to-gone": 3, "to-b": 2}

    healthy = {
        s.labels["cluster"]: s.value
        for s in families["metaprotocol_upstream_endpoint_healthy"].samples
    }
    assert healthy == {"alpha": 1, "beta": 1, "gone": 0}
    ejections = families["metaprotocol_upstream_endpoint_ejections"].samples
    assert {s.labels["cluster"]: s.value for s in ejections}["gone"] == 1
    assert families["metaprotocol_upstream_endpoint_cx_active"].type == "gauge"
    assert families["metaprotocol_upstream_endpoint_rq_active"].type == "gauge"

    cpu = families["process_cpu_seconds"]
    assert cpu.type == "counter" and cpu.samples[0].value > 0
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def test_clusters_text_and_json(running: RunningProxy) -> None:
    assert running.admin_address is not None
    text = scrape_admin(running.admin_address, "/clusters")
    fields = dict(line.rsplit("::", 1) for line in text.splitlines())
    a = next(k for k in fields if k.startswith("alpha::")).split("::")[1]
    assert fields[f"alpha::{a}::health_flags"] == "healthy"
    gone = next(k for k in fields if k.startswith("gone::")).split("::")[1]
    assert fields[f"gone::{gone}::health_flags"] == "/failed_outlier_check"
    assert fields[f"gone::{gone}::ejections"] == "1"
    assert float(fields[f"gone::{gone}::ejected_for"]) > 0
    assert fields[f"alpha::{a}::rq_active"] == "0"

    data = json.loads(scrape_admin(running.admin_address, "/clusters?format=json"))
    clusters = {c["name"]: c["endpoints"] for c in data["clusters"]}
    assert list(clusters) == ["alpha", "beta", "gone"]
    (alpha,) = clusters["alpha"]
    assert alpha["healthy"] is True and alpha["address"] == a
    assert alpha["cx_active"] >= 1  # httpx keeps the connection; so does the proxy upstream
    (dead,) = clusters["gone"]
    assert dead["healthy"] is False and dead["ejections"] == 1 and dead["cx_active"] == 0


def test_grafana_dashboard_queries_only_exposed_metrics(running: RunningProxy) -> None:
    assert running.admin_address is not None
    text = scrape_admin(running.admin_address)
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried |= set(re.findall(r"\b((?:metaprotocol|process)_[a-z0-9_]+)", target["expr"]))
    assert len(queried) >= 8
    assert sorted(queried - exposed) == []

"""Active health in the admin's /clusters (text and JSON, merged over workers) and the log."""

from __future__ import annotations

import logging

import pytest

from metaprotocol.core.outputs import EndpointHealthChanged
from metaprotocol.core.stats import EndpointStatus
from metaprotocol.endpoints import clusters_json, clusters_text, merge_statuses, statuses_from_json
from metaprotocol.logs import OperationsLog


def _status(
    address: str, healthy: bool, health: str = "", ejected_for: float = 0.0
) -> EndpointStatus:
    return EndpointStatus("cache", address, healthy, ejected_for, 0, 0, 0, 0, health)


def test_health_flags_say_why_an_endpoint_is_out() -> None:
    text = clusters_text(
        [
            _status("a:1", True, "healthy"),
            _status("b:1", False, "unhealthy"),
            _status("c:1", False, "pending"),
            _status("d:1", False, "unhealthy", ejected_for=3.0),
            _status("e:1", True),
        ]
    )
    flags = [line for line in text.splitlines() if "health_flags" in line]
    assert flags == [
        "cache::a:1::health_flags::healthy",
        "cache::b:1::health_flags::/failed_active_hc",
        "cache::c:1::health_flags::/pending_active_hc",
        "cache::d:1::health_flags::/failed_outlier_check/failed_active_hc",
        "cache::e:1::health_flags::healthy",
    ]


def test_json_carries_health_and_reads_back_and_workers_merge_to_the_worst() -> None:
    statuses = [_status("a:1", False, "unhealthy"), _status("b:1", True)]
    data = clusters_json(statuses)
    assert [e["health"] for e in data["clusters"][0]["endpoints"]] == ["unhealthy", ""]
    assert statuses_from_json(data) == statuses
    merged = merge_statuses(
        [[_status("a:1", True, "healthy")], [_status("a:1", False, "unhealthy")]]
    )
    assert (merged[0].healthy, merged[0].health) == (False, "unhealthy")


def test_health_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    log = OperationsLog()
    with caplog.at_level(logging.INFO, logger="metaprotocol"):
        log.observe(EndpointHealthChanged("cache", "10.0.0.1:6379", "unhealthy", 3))
        log.observe(EndpointHealthChanged("cache", "10.0.0.1:6379", "healthy", 2))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "endpoint 10.0.0.1:6379 of cluster cache unhealthy after 3 failed probe(s) in a row",
        ),
        (
            logging.INFO,
            "endpoint 10.0.0.1:6379 of cluster cache healthy after 2 good probe(s) in a row",
        ),
    ]

"""Observer routing on its own: access log, filter errors, watchers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from metaprotocol.accesslog import AccessLog
from metaprotocol.adapters.observers import Observers
from metaprotocol.core.outputs import FilterFailed, NoRouteMatched, Output, RequestCompleted


def _completed() -> RequestCompleted:
    return RequestCompleted(1, "redis", "r", "c", "h:1", "ok", None, 0.001, {})


def test_completed_requests_reach_the_access_log_and_every_event_the_watchers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access.log"
    observers = Observers(AccessLog(str(path)))
    seen: list[Output] = []
    observers.append(seen.append)
    events: list[Output] = [_completed(), NoRouteMatched(1)]
    for event in events:
        observers(event)
    observers.close()
    assert seen == events
    assert path.read_text().count("\n") == 1 and "redis" in path.read_text()


def test_a_filter_that_raised_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    observers = Observers()
    with caplog.at_level(logging.ERROR, logger="metaprotocol"):
        observers(FilterFailed(1, "redis", "auth", "default", KeyError("x")))
    assert "filter auth raised on listener redis" in caplog.text


def test_reopening_without_an_access_log_does_nothing() -> None:
    observers = Observers()
    observers.reopen_access_log()
    observers.close()
    assert observers.access_log is None and observers.tracer is None

"""Log formatting, rate limiting and startup problem descriptions, without processes."""

from __future__ import annotations

import errno
import json
import logging
import sys

import pytest

from metaprotocol.core.outputs import EndpointConnectFailed, EndpointEjected
from metaprotocol.logs import JsonFormatter, OperationsLog, RateLimitedLog
from metaprotocol.startup import describe, missing_dependency, reason


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limiter = RateLimitedLog(logging.getLogger("t"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        assert limiter.log(logging.WARNING, ("a",), "a failed: %s", "x")
        assert not limiter.log(logging.WARNING, ("a",), "a failed: %s", "y")
        assert limiter.log(logging.WARNING, ("b",), "b failed")  # another key: its own budget
        clock.now += 9.9
        assert not limiter.log(logging.WARNING, ("a",), "a failed: %s", "z")
        clock.now += 0.1
        assert limiter.log(logging.WARNING, ("a",), "a failed: %s", "w")
        clock.now += 10
        assert limiter.log(logging.WARNING, ("a",), "a failed: %s", "v")
    assert [r.getMessage() for r in caplog.records] == [
        "a failed: x",
        "b failed",
        "a failed: w (2 more like it suppressed in the last 10s)",
        "a failed: v",
    ]


def test_operations_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    ops = OperationsLog(RateLimitedLog(logging.getLogger("metaprotocol"), clock=_Clock()))
    with caplog.at_level(logging.INFO, logger="metaprotocol"):
        ops.observe(EndpointConnectFailed("db", "10.0.0.1:6379", "connection refused"))
        ops.observe(EndpointConnectFailed("db", "10.0.0.1:6379", "connection refused"))
        ops.observe(EndpointEjected("db", "10.0.0.1:6379", 30.0, 1))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "upstream 10.0.0.1:6379 of cluster db: connect failure: connection refused"),
        ("WARNING", "endpoint 10.0.0.1:6379 of cluster db ejected for 30s (ejection 1)"),
    ]


def test_json_formatter() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("metaprotocol.x").makeRecord(
            "metaprotocol.x", logging.ERROR, __file__, 1, "it %s", ("failed",), sys.exc_info()
        )
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "error" and data["logger"] == "metaprotocol.x"
    assert data["message"] == "it failed" and data["time"].endswith("Z")
    assert "ValueError: boom" in data["exception"]


def test_describe_flattens_exception_groups() -> None:
    group = ExceptionGroup(
        "two",
        [
            OSError(errno.EADDRINUSE, "Address already in use"),
            ExceptionGroup("one", [KeyError("k")]),
        ],
    )
    assert describe(group) == ["address already in use", "KeyError: 'k'"]
    assert reason(OSError(errno.EACCES, "Permission denied")) == "permission denied"


def test_asyncio_and_blocking_need_nothing_more() -> None:
    assert missing_dependency("asyncio") is None
    assert missing_dependency("blocking") is None

"""What the adapters log: what the core reports as data, never a request's bytes."""

from __future__ import annotations

import logging

import pytest

from metaprotocol.adapters.dispatch import Dispatcher
from metaprotocol.core.config import Config
from metaprotocol.core.events import DataReceived, Event
from metaprotocol.core.outputs import EndpointConnectFailed, FilterFailed, Output, Write
from metaprotocol.core.stats import EndpointStatus, Stats

SECRET = b"AUTH default s3cret-password"


class _Core:
    """A core that reports a filter failure and a connect failure, then crashes."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.drained = False
        self.calls = 0

    def handle(self, event: Event, now: float) -> list[Output]:
        self.calls += 1
        if self.calls == 1:
            return [
                FilterFailed(1, "redis", "auth_check", "default", KeyError("tenant")),
                EndpointConnectFailed("cache", "10.0.0.5:6379", "[Errno 111] Connection refused"),
                Write(1, b"-ERR proxy error: internal error\r\n"),
            ]
        raise RuntimeError("core bug")

    def next_deadline(self) -> float | None:
        return None

    def drain(self, now: float) -> list[Output]:
        return []

    def reload(self, config: Config, now: float) -> list[Output]:
        return []

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        return []


def test_reports_are_logged_and_a_crash_never_logs_the_event_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="metaprotocol")
    written: list[bytes] = []
    dispatcher = Dispatcher(
        _Core(),
        clock=lambda: 0.0,
        execute=lambda instruction: None,
        arm_timer=lambda deadline: None,
        write=lambda conn, data: written.append(data),
    )
    dispatcher.feed(DataReceived(1, SECRET))
    dispatcher.feed(DataReceived(1, SECRET))  # this one crashes the core
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "filter auth_check raised on listener redis (route default); the request got an "
        "internal error",
        "upstream 10.0.0.5:6379 of cluster cache: connect failure: [Errno 111] Connection refused",
        "core.handle raised on DataReceived (connection 1)",
    ]
    filter_record = caplog.records[0]
    assert filter_record.exc_info is not None and filter_record.exc_info[0] is KeyError
    assert written == [b"-ERR proxy error: internal error\r\n"]
    assert len(dispatcher.crashes) == 1
    assert b"s3cret" not in caplog.text.encode()

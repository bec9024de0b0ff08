"""Tracing in the adapters: the exporter is made from the config at start (``Serving``),
kept through reloads, and fed the completed requests that carry a span (``Observers``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from metaprotocol.adapters.serving import Serving
from metaprotocol.core.config import Config, TracingConfig
from metaprotocol.core.events import TimePassed
from metaprotocol.core.outputs import Output, RequestCompleted
from metaprotocol.core.tracing import TraceSpan
from tests.adapters.fakecore import FakeCore

TRACING = TracingConfig("http://127.0.0.1:9", "svc", 0.5)


class _Recorder:
    def __init__(self) -> None:
        self.recorded: list[RequestCompleted] = []
        self.closed = False

    def record(self, event: RequestCompleted, wall_time: float) -> None:
        self.recorded.append(event)

    def close(self) -> None:
        self.closed = True


class _EmitsCompletions(FakeCore):
    def __init__(self, config: Config, outputs: list[Output]) -> None:
        super().__init__(config)
        self.outputs = outputs
        self.reloaded: list[Config] = []

    def handle(self, event: Any, now: float) -> list[Output]:
        out, self.outputs = self.outputs, []
        return out

    def reload(self, config: Config, now: float) -> list[Output]:
        self.reloaded.append(config)
        return []


def _completed(span: TraceSpan | None) -> RequestCompleted:
    return RequestCompleted(1, "l", "r", "c", "h:1", "ok", None, 0.001, {}, span=span)


class _NoTimer:
    def arm(self, deadline: float | None) -> None:
        pass


def _serving(core: FakeCore, config: Config) -> Serving:
    return Serving(
        config,
        core,
        clock=lambda: 0.0,
        execute=lambda instruction: None,
        timer=lambda fire: _NoTimer(),
    )


def test_no_tracing_section_no_exporter() -> None:
    config = Config(listeners=(), clusters=())
    assert _serving(FakeCore(config), config).observers.tracer is None


def test_spans_go_to_the_exporter_and_a_reload_keeps_the_start_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Config(listeners=(), clusters=(), tracing=TRACING)
    traced, untraced = _completed(TraceSpan(5, 6, 0)), _completed(None)
    core = _EmitsCompletions(config, [traced, untraced])
    serving = _serving(core, config)
    observers = serving.observers
    assert observers.tracer is not None and observers.tracer.config == TRACING
    observers.tracer.close()  # the real exporter's thread: replaced by a recorder
    recorder = _Recorder()
    observers.tracer = recorder  # type: ignore[assignment]
    serving.dispatcher.feed(TimePassed())
    assert recorder.recorded == [traced]
    with caplog.at_level(logging.WARNING, logger="metaprotocol"):
        serving.reload(dataclasses.replace(config, tracing=None))
        serving.reload(dataclasses.replace(config, tracing=TracingConfig("http://x:1")))
    assert [c.tracing for c in core.reloaded] == [TRACING, TRACING]
    assert caplog.text.count("tracing settings change only on restart") == 2
    serving.close_logs()
    assert recorder.closed

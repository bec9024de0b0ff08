"""The admin endpoint's core on its own: events in, instructions out, no sockets."""

from __future__ import annotations

from metaprotocol.adapters.admin_core import ANSWER_BURST, AdminCore
from metaprotocol.admin import AdminApp
from metaprotocol.core.config import AdminConfig
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    TimePassed,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import CloseConnection, Output, ReadDisable, ReadEnable, Write
from metaprotocol.core.stats import Stats

READY = b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"


def _core(**config: float) -> AdminCore:
    app = AdminApp(
        ready=lambda: True,
        snapshot=lambda: Stats().snapshot(),
        config_raw=lambda: {"big": "x" * 4000},
    )
    return AdminCore(app, AdminConfig(**config))  # type: ignore[arg-type]


def _writes(outputs: list[Output]) -> list[bytes]:
    return [out.data for out in outputs if isinstance(out, Write)]


def test_a_request_is_answered_and_the_connection_kept() -> None:
    core = _core()
    assert core.handle(Accepted(1, "admin", "peer"), 0.0) == []
    out = core.handle(DataReceived(1, READY), 0.0)
    (answer,) = _writes(out)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ready\n")
    assert [o for o in out if not isinstance(o, Write)] == []


def test_connections_over_the_cap_are_closed_and_a_close_frees_a_slot() -> None:
    core = _core(max_connections=1)
    assert core.handle(Accepted(1, "admin"), 0.0) == []
    assert core.handle(Accepted(2, "admin"), 0.0) == [CloseConnection(2, flush=False)]
    core.handle(Closed(1), 0.0)
    assert core.handle(Accepted(3, "admin"), 0.0) == []


def test_connection_close_is_answered_then_closed_with_a_flush() -> None:
    core = _core()
    core.handle(Accepted(1, "admin"), 0.0)
    out = core.handle(
        DataReceived(1, b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 0.0
    )
    assert _writes(out)[0].startswith(b"HTTP/1.1 404 ")
    assert out[-1] == CloseConnection(1, flush=True)
    assert core.conns == {} and core.gate.open == 0


def test_a_body_is_refused_from_its_head() -> None:
    core = _core()
    core.handle(Accepted(1, "admin"), 0.0)
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n"
    out = core.handle(DataReceived(1, head), 0.0)
    assert _writes(out)[0].startswith(b"HTTP/1.1 413 ")
    assert out[-1] == CloseConnection(1, flush=True)


def test_end_of_stream_after_a_request_answers_it_and_closes() -> None:
    core = _core()
    core.handle(Accepted(1, "admin"), 0.0)
    core.handle(DataReceived(1, b"GET /ready HTTP/1.1\r\nHost: a\r\n"), 0.0)
    out = core.handle(EofReceived(1), 0.0)
    assert out[-1] == CloseConnection(1, flush=True)


def test_pipelined_requests_are_answered_a_burst_at_a_time() -> None:
    core = _core()
    core.handle(Accepted(1, "admin"), 0.0)
    dump = b"GET /config_dump HTTP/1.1\r\nHost: a\r\n\r\n"
    out = core.handle(DataReceived(1, dump * 100), 1.0)
    first = _writes(out)
    assert sum(map(len, first)) >= ANSWER_BURST and len(first) < 100
    assert out[-1] == ReadDisable(1)  # not read while a backlog waits
    assert core.next_deadline() == 1.0  # the rest on the next tick
    # More bytes meanwhile (one read already requested) are kept, not answered.
    assert core.handle(DataReceived(1, READY), 1.0) == []
    answered = len(first)
    while True:
        out = core.handle(TimePassed(), 1.0)
        answered += len(_writes(out))
        if ReadEnable(1) in out:
            break
    assert answered == 101  # every request, the late /ready last
    assert core.next_deadline() == 1.0 + AdminConfig().idle_timeout


def test_above_the_high_watermark_it_neither_reads_nor_answers_until_drained() -> None:
    core = _core()
    core.handle(Accepted(1, "admin"), 0.0)
    core.handle(DataReceived(1, READY), 0.0)
    assert core.handle(WriteBufferHigh(1), 0.0) == [ReadDisable(1)]
    assert core.handle(DataReceived(1, READY * 2), 0.0) == []
    out = core.handle(WriteBufferLow(1), 0.0)
    assert len(_writes(out)) == 2 and out[-1] == ReadEnable(1)


def test_a_connection_without_progress_is_closed_after_the_idle_timeout() -> None:
    core = _core(idle_timeout=5.0)
    core.handle(Accepted(1, "admin"), 0.0)
    core.handle(Accepted(2, "admin"), 0.0)
    core.handle(DataReceived(2, b"GET /ready"), 3.0)  # progress: its clock restarts
    assert core.next_deadline() == 5.0
    assert core.handle(TimePassed(), 5.0) == [CloseConnection(1, flush=False)]
    assert core.next_deadline() == 8.0
    assert core.handle(TimePassed(), 8.0) == [CloseConnection(2, flush=False)]
    assert core.next_deadline() is None and core.gate.open == 0


def test_events_for_unknown_connections_are_ignored() -> None:
    core = _core()
    for event in (DataReceived(9, READY), EofReceived(9), WriteBufferLow(9), Closed(9)):
        assert core.handle(event, 0.0) == []

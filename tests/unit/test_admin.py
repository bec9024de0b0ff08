"""The admin endpoint without sockets: routes, Prometheus rendering, HTTP/1.1 framing."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.admin import (
    MAX_REQUEST_HEAD,
    AdminApp,
    AdminConnection,
    AdmissionGate,
    render_prometheus,
)
from metaprotocol.core.stats import Stats


def _stats() -> Stats:
    stats = Stats()
    labels = (("listener", 'we"ird\\name\nx'), ("route", "r1"))
    stats.inc("request", labels, 3)
    stats.inc("request", (("listener", "b"), ("route", "r2")))
    stats.gauges[("cx_active", (("listener", "b"),))] = 2
    stats.gauges[("load", ())] = 0.5
    for value in (0.0002, 0.003, 0.7, 20.0):
        stats.histogram("request_duration_seconds", (("listener", "b"),)).observe(value)
    return stats


def test_prometheus_text_parses_with_escaped_labels() -> None:
    text = render_prometheus(_stats().snapshot())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    request = families["metaprotocol_request"]
    assert request.type == "counter"
    values = {s.labels["listener"]: s.value for s in request.samples}
    assert values == {'we"ird\\name\nx': 3, "b": 1}
    assert all(s.name == "metaprotocol_request_total" for s in request.samples)
    assert families["metaprotocol_cx_active"].samples[0].value == 2
    assert families["metaprotocol_load"].samples[0].value == 0.5
    hist = families["metaprotocol_request_duration_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.00025"] == 1 and buckets["0.005"] == 2 and buckets["1.0"] == 3
    assert buckets["+Inf"] == 4
    (total,) = [s.value for s in hist.samples if s.name.endswith("_sum")]
    assert abs(total - 20.7032) < 1e-9
    assert [s.value for s in hist.samples if s.name.endswith("_count")] == [4]


def test_empty_snapshot_renders_only_process_metrics() -> None:
    families = list(text_string_to_metric_families(render_prometheus(Stats().snapshot())))
    assert families and all(f.name.startswith("process_") for f in families)


def _app(ready: list[bool]) -> AdminApp:
    return AdminApp(
        ready=lambda: ready[0],
        snapshot=lambda: _stats().snapshot(),
        config_raw=lambda: {"listeners": [{"name": "a"}], "admin": {"address": "127.0.0.1:0"}},
    )


def test_routes() -> None:
    ready = [True]
    app = _app(ready)
    assert app.respond("GET", "/ready") == (200, "text/plain; charset=utf-8", b"ready\n")
    ready[0] = False
    assert app.respond("GET", "/ready")[::2] == (503, b"draining\n")
    status, ctype, body = app.respond("GET", "/config_dump?x=1")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body)["listeners"] == [{"name": "a"}]
    assert app.respond("GET", "/stats/prometheus")[0] == 200
    assert app.respond("GET", "/missing")[0] == 404
    assert app.respond("POST", "/ready")[0] == 405


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated responses (each has a content-length) into (status, body)."""
    out: list[tuple[int, bytes]] = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


def test_pipelined_keep_alive_requests_split_anywhere() -> None:
    conn = AdminConnection(_app([True]))
    wire = (
        b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    sent = b""
    closed = False
    for i in range(0, len(wire), 7):
        out, closed = conn.receive(wire[i : i + 7])
        while out and not closed:  # each answer written, the next one received is answered
            sent += out
            out, closed = conn.answer_next()
        sent += out
    assert closed
    assert _responses(sent) == [(200, b"ready\n"), (404, b"not found\n"), (200, b"ready\n")]


def test_garbage_gets_400_and_close() -> None:
    out, close = AdminConnection(_app([True])).receive(b"\x00\x01 nonsense\r\n\r\n")
    assert close and out.startswith(b"HTTP/1.1 400 ")


def test_eof_closes() -> None:
    assert AdminConnection(_app([True])).receive(b"") == (b"", True)


# -- bounds: one request at a time, request size, config dump size -----------------------


def test_pipelined_requests_are_answered_one_at_a_time() -> None:
    conn = AdminConnection(_app([True]))
    out, close = conn.receive(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert _responses(out) == [(200, b"ready\n")] and not close
    for _ in range(2):
        out, close = conn.answer_next()
        assert _responses(out) == [(200, b"ready\n")] and not close
    assert conn.answer_next() == (b"", False)  # nothing more received: read again


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 1000000000000000", b"Transfer-Encoding: chunked", b"Content-Length: 1"],
)
def test_a_request_with_a_body_is_refused_from_its_head(framing: bytes) -> None:
    conn = AdminConnection(_app([True]))
    out, close = conn.receive(b"POST /ready HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
    assert close
    assert out.startswith(b"HTTP/1.1 413 ") and b"connection: close" in out.lower()


def test_a_head_request_with_a_body_gets_a_bodiless_413() -> None:
    conn = AdminConnection(_app([True]))
    out, close = conn.receive(b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert close and out.startswith(b"HTTP/1.1 413 ") and out.endswith(b"\r\n\r\n")


def test_an_empty_body_is_fine() -> None:
    conn = AdminConnection(_app([True]))
    out, close = conn.receive(b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert _responses(out) == [(200, b"ready\n")] and not close


def test_a_request_head_over_the_limit_gets_431() -> None:
    conn = AdminConnection(_app([True]))
    big = b"GET /ready HTTP/1.1\r\nHost: x\r\nX: " + b"y" * MAX_REQUEST_HEAD
    out, close = conn.receive(big)
    assert close and out.startswith(b"HTTP/1.1 431 ")


def test_config_dump_of_a_huge_config_is_refused() -> None:
    raw: dict[str, object] = {"listeners": [{"name": "x" * 1000, "n": i} for i in range(5000)]}
    app = AdminApp(ready=lambda: True, snapshot=lambda: _stats().snapshot(), config_raw=lambda: raw)
    status, _, body = app.respond("GET", "/config_dump")
    assert status == 503 and b"too large" in body
    raw["listeners"] = raw["listeners"][:100]  # type: ignore[index]
    status, _, body = app.respond("GET", "/config_dump")
    assert status == 200 and len(json.loads(body)["listeners"]) == 100


def test_admission_gate_caps_open_connections() -> None:
    gate = AdmissionGate(2)
    assert gate.admit() and gate.admit()
    assert not gate.admit()
    gate.release()
    assert gate.admit()

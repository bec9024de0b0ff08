"""What the core reports when a request ends (the access log's and the span's data), and the
trace context it continues and sends upstream, with the real codecs."""

from __future__ import annotations

import dataclasses

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderTransport
from thrift.transport.TTransport import TMemoryBuffer

from metaprotocol.core.config import (
    ClusterConfig,
    Config,
    Endpoint,
    RetryPolicy,
    RouteAction,
    TracingConfig,
)
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    Event,
    UpstreamConnected,
    UpstreamConnectFailed,
)
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import OpenUpstream, Output, RequestCompleted, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.tracing import parse_traceparent

from .helpers import UP, cmd, config, req, resp, route

EXAMPLE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = 0xB7AD6B7169203331
TRACING = TracingConfig("http://127.0.0.1:4318")
PEER = "192.0.2.7:41000"


class Run:
    """A proxy fed by hand; every output kept."""

    def __init__(self, cfg: Config, *, observe: bool = True) -> None:
        draws = iter([0.125 * (i % 8) for i in range(1, 1000)])
        self.proxy = Proxy(cfg, now=0.0, random=lambda: next(draws), observe=observe)
        self.outputs: list[Output] = []
        self.now = 0.0

    def __call__(self, event: Event, at: float | None = None) -> list[Output]:
        if at is not None:
            self.now = at
        out = self.proxy.handle(event, self.now)
        self.outputs += out
        return out

    def written(self, conn: int) -> bytes:
        return b"".join(o.data for o in self.outputs if isinstance(o, Write) and o.conn == conn)

    def completed(self) -> list[RequestCompleted]:
        return [o for o in self.outputs if isinstance(o, RequestCompleted)]


def _http(tracing: TracingConfig | None = TRACING) -> Config:
    return dataclasses.replace(config(codec="http1"), tracing=tracing)


def _injected(upstream_bytes: bytes) -> str:
    head = upstream_bytes.split(b"\r\n\r\n", 1)[0].decode()
    values = [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]]
    names = [line.split(":", 1)[0].lower() for line in head.split("\r\n")[1:]]
    assert names.count("traceparent") == 1, head
    return values[names.index("traceparent")]


def test_http_request_continues_the_trace_and_reports_every_field() -> None:
    run = Run(_http())
    request = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {EXAMPLE}\r\n\r\n".encode()
    run(Accepted(1, "main", PEER))
    opened = run(DataReceived(1, request), at=1.0)
    assert [o for o in opened if isinstance(o, OpenUpstream)] == [OpenUpstream(-1, *UP)]
    run(UpstreamConnected(-1))
    upstream = run.written(-1)
    child = parse_traceparent(_injected(upstream))
    assert child is not None
    trace_id, child_span, flags = child
    assert (trace_id, flags) == (TRACE, 1) and child_span != PARENT
    response = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n"
    run(DataReceived(-1, response), at=1.25)
    [done] = run.completed()
    assert run.written(1) == response
    assert done.span is not None
    assert (done.span.trace_id, done.span.span_id, done.span.parent_span_id) == (
        TRACE,
        child_span,
        PARENT,
    )
    assert (done.listener, done.route, done.cluster, done.endpoint) == (
        "main",
        "r",
        "main",
        "10.0.0.1:9000",
    )
    assert (done.peer, done.codec, done.wire_status) == (PEER, "http1", "404")
    assert (done.bytes_received, done.bytes_sent, done.attempts) == (len(request), len(response), 1)
    assert (done.status, done.error, done.duration) == ("ok", None, 0.25)


def test_without_tracing_the_request_goes_upstream_untouched() -> None:
    run = Run(_http(tracing=None))
    request = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {EXAMPLE}\r\n\r\n".encode()
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, request))
    run(UpstreamConnected(-1))
    assert run.written(-1) == request
    run(DataReceived(-1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    [done] = run.completed()
    assert done.span is None and done.wire_status == "200"


def test_an_unsampled_parent_goes_upstream_untouched() -> None:
    run = Run(_http())
    unsampled = EXAMPLE[:-2] + "00"
    request = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {unsampled}\r\n\r\n".encode()
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, request))
    run(UpstreamConnected(-1))
    assert run.written(-1) == request


def test_a_request_without_context_starts_a_trace() -> None:
    run = Run(_http())
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"))
    run(UpstreamConnected(-1))
    child = parse_traceparent(_injected(run.written(-1)))
    run(DataReceived(-1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    [done] = run.completed()
    assert done.span is not None and done.span.parent_span_id == 0
    assert child == (done.span.trace_id, done.span.span_id, 1)


def test_a_local_answer_is_traced_and_logged_with_its_wire_status() -> None:
    path: dict[str, str] = {":path": "/only"}
    only = route("main", "only", None, **path)
    cfg = dataclasses.replace(config((only,), codec="http1"), tracing=TRACING)
    run = Run(cfg)
    run(Accepted(1, "main", PEER))
    request = f"GET /other HTTP/1.1\r\nHost: x\r\ntraceparent: {EXAMPLE}\r\n\r\n".encode()
    run(DataReceived(1, request))
    [done] = run.completed()
    reply = run.written(1)
    assert reply.startswith(b"HTTP/1.1 404 ")
    assert (done.status, done.error, done.wire_status) == (
        "local_error",
        ErrorType.ROUTE_NOT_FOUND,
        "404",
    )
    assert (done.route, done.cluster, done.endpoint, done.attempts) == ("", "", "", 0)
    assert (done.bytes_received, done.bytes_sent) == (len(request), len(reply))
    assert done.span is not None and done.span.parent_span_id == PARENT


def test_a_refused_redis_command_gets_a_completion() -> None:
    run = Run(config(codec="redis"))
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, cmd("MULTI")))
    reply = run.written(1)
    assert reply.startswith(b"-ERR ")
    [done] = run.completed()
    assert (done.status, done.error, done.wire_status) == (
        "local_error",
        ErrorType.BAD_REQUEST,
        "ERR",
    )
    assert (done.bytes_received, done.bytes_sent) == (len(cmd("MULTI")), len(reply))
    assert (done.listener, done.peer, done.codec, done.route) == ("main", PEER, "redis", "")


def test_a_redis_reply_reports_its_error_prefix_and_no_trace_goes_upstream() -> None:
    run = Run(dataclasses.replace(config(codec="redis"), tracing=TRACING))
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, cmd("INCR", "k")))
    run(UpstreamConnected(-1))
    assert run.written(-1) == cmd("INCR", "k")  # RESP cannot carry a trace context
    run(DataReceived(-1, b"-WRONGTYPE Operation against a key holding the wrong kind\r\n"))
    [done] = run.completed()
    assert (done.status, done.wire_status) == ("error", "WRONGTYPE")
    assert done.span is not None and done.span.parent_span_id == 0


def test_a_thrift_theader_context_is_continued_and_forwarded_as_is() -> None:
    buf = TMemoryBuffer()
    transport = THeaderTransport(buf, [THeaderClientType.HEADERS])
    transport.set_header(b"traceparent", EXAMPLE.encode())
    protocol = TBinaryProtocol(transport)
    protocol.writeMessageBegin("ping", TMessageType.CALL, 7)
    protocol.writeStructBegin("ping_args")
    protocol.writeFieldStop()
    protocol.writeStructEnd()
    protocol.writeMessageEnd()
    transport.flush()
    frame = buf.getvalue()
    run = Run(dataclasses.replace(config(codec="thrift"), tracing=TRACING))
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, frame))
    run(UpstreamConnected(-1))
    assert run.written(-1) == frame  # no THeader mutation: forwarded untouched
    run(Closed(1))
    [done] = run.completed()
    assert done.status == "abandoned"
    assert done.span is not None
    assert (done.span.trace_id, done.span.parent_span_id) == (TRACE, PARENT)


def test_attempts_count_the_retries() -> None:
    other = ("10.0.0.2", 9000)
    cluster = ClusterConfig("main", (Endpoint(*UP), Endpoint(*other)))
    retry = RouteAction(cluster="main", retries=RetryPolicy(attempts=2))
    run = Run(config((route(action=retry),), (cluster,)))
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, req(5)))
    run(UpstreamConnectFailed(-1, "refused"))
    run(UpstreamConnected(-2))
    run(DataReceived(-2, resp(5)))
    opened = [o for o in run.outputs if isinstance(o, OpenUpstream)]
    assert [o.conn for o in opened] == [-1, -2] and opened[0].host != opened[1].host
    [done] = run.completed()
    assert (done.attempts, done.endpoint, done.status) == (2, f"{opened[1].host}:9000", "ok")


def test_nothing_is_reported_when_nobody_observes() -> None:
    run = Run(_http(tracing=None), observe=False)
    run(Accepted(1, "main", PEER))
    run(DataReceived(1, cmd("MULTI")))  # not HTTP: a decode error answered with a 400
    assert run.written(1).startswith(b"HTTP/1.1 400 ")
    assert run.completed() == []

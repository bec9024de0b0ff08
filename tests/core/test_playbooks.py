"""Playbooks for the core engine, each a readable protocol trace (issue 2's acceptance list)."""

from __future__ import annotations

from typing import Any

from metaprotocol.core.config import ClusterConfig, Endpoint
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    UpstreamConnected,
    UpstreamConnectFailed,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    OpenUpstream,
    ReadDisable,
    ReadEnable,
    Write,
)
from metaprotocol.testing import Playbook
from metaprotocol.testing.playbook import placeholder

from .helpers import UP, config, error_reply, oneway, ping, playbook, pong, req, resp, route


def connected(pb: Playbook, client: int = 1) -> Playbook:
    """A client connected; its first request opened the upstream connection."""
    pb >> Accepted(client, "main")
    pb << None
    return pb


def finish(pb: Playbook, *conns: Any) -> None:
    for conn in conns:
        pb >> Closed(conn)
    pb << None
    pb.assert_clean()


def test_three_pipelined_requests_in_one_read() -> None:
    up = placeholder("up")  # the upstream connection, whatever id the core gives it
    pb = connected(playbook())
    pb >> DataReceived(1, req(1) + req(2) + req(3))
    pb << OpenUpstream(up, *UP)
    pb << None
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2) + req(3))
    pb >> DataReceived(up, resp(2) + resp(1))
    pb << Write(1, resp(2))
    pb << Write(1, resp(1))
    pb >> DataReceived(up, resp(3))
    pb << Write(1, resp(3))
    finish(pb, 1, up)


def test_one_request_fed_byte_by_byte() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    frame = req(9, b"payload", method="get")
    for i in range(len(frame) - 1):
        pb >> DataReceived(1, frame[i : i + 1])
        pb << None
    pb >> DataReceived(1, frame[-1:])
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, frame)
    pb >> DataReceived(up, resp(9, b"ok"))
    pb << Write(1, resp(9, b"ok"))
    finish(pb, 1, up)


def test_same_request_id_from_two_clients_shares_one_upstream_connection() -> None:
    up = placeholder("up")
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(5, b"from-1"))
    pb << OpenUpstream(up, *UP)
    pb >> DataReceived(2, req(5, b"from-2"))
    pb << None  # no second connection: the first is shared
    pb >> UpstreamConnected(up)
    # Client 2's id 5 is taken on this connection, so the core rewrote it to 1.
    pb << Write(up, req(5, b"from-1") + req(1, b"from-2"))
    pb >> DataReceived(up, resp(1, b"for-2") + resp(5, b"for-1"))
    pb << Write(2, resp(5, b"for-2"))  # id restored to what client 2 sent
    pb << Write(1, resp(5, b"for-1"))
    finish(pb, 1, 2, up)


def test_heartbeat_answered_locally_and_never_forwarded() -> None:
    pb = connected(playbook())
    pb >> DataReceived(1, ping(77))
    pb << Write(1, pong(77))
    pb << None
    assert pb.proxy.stats.counter("heartbeat", (("listener", "main"),)) == 1
    finish(pb, 1)


def test_upstream_heartbeat_answered_and_not_passed_to_clients() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1))
    pb >> DataReceived(up, ping(1000))
    pb << Write(up, pong(1000))
    pb << None
    pb >> DataReceived(up, pong(1001))
    pb << None
    pb >> DataReceived(up, resp(1))
    pb << Write(1, resp(1))
    finish(pb, 1, up)


def test_oneway_forwarded_and_nothing_awaited() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, oneway(3, method="log"))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, oneway(3, method="log"))
    pb << None
    assert pb.proxy.request_count() == 0  # nothing waits for an answer
    assert pb.proxy.next_deadline() is not None  # only the idle timer
    finish(pb, 1, up)


def test_no_route_gives_codec_error_reply() -> None:
    pb = connected(playbook(config(routes=())))
    pb >> DataReceived(1, req(4, method="nope"))
    pb << Write(1, error_reply(4, "route_not_found", "no route matched", 1))
    finish(pb, 1)


def test_upstream_connect_failure_gives_error_reply() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, req(1) + req(2))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnectFailed(up, "connection refused")
    # The adapter's error (it may name the address) stays out of the replies.
    pb << Write(1, error_reply(1, "connect_failure", "connect failed", 8))
    pb << Write(1, error_reply(2, "connect_failure", "connect failed", 8))
    finish(pb, 1)


def test_upstream_closes_with_three_in_flight_gives_three_error_replies() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, req(1) + req(2) + req(3))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2) + req(3))
    pb >> Closed(up)
    detail = "upstream connection closed"
    for rid in (1, 2, 3):
        pb << Write(1, error_reply(rid, "upstream_reset", detail, 7))
    finish(pb, 1)


def test_request_timeout_replies_and_late_response_is_dropped() -> None:
    up = placeholder("up")
    pb = connected(playbook(config(request_timeout=2.0)))
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1))
    pb.tick(1.9)
    pb << None
    pb.tick(0.1)
    pb << Write(1, error_reply(1, "timeout", "request timed out", 6))
    pb >> DataReceived(up, resp(1, b"late"))
    pb << None
    assert pb.proxy.stats.counter("response_dropped", (("cluster", "main"),)) == 1
    finish(pb, 1, up)


def test_idle_timeout_closes() -> None:
    pb = connected(playbook(config(idle_timeout=10.0)))
    pb.tick(6.0)
    pb >> DataReceived(1, ping(1))  # activity moves the deadline
    pb << Write(1, pong(1))
    pb.tick(6.0)
    pb << None
    pb.tick(4.0)
    pb << CloseConnection(1, flush=True)
    assert pb.proxy.stats.counter("idle_timeout", (("listener", "main"),)) == 1
    finish(pb)


def test_oversized_message_gives_error_reply_and_close() -> None:
    pb = connected(playbook(config(max_message_size=64)))
    pb >> DataReceived(1, req(1, b"x" * 100))
    pb << Write(1, error_reply(0, "message_too_large", "frame of 112 bytes is too large", 9))
    pb << CloseConnection(1, flush=True)
    pb >> DataReceived(1, req(2))  # late bytes from a closed connection are ignored
    finish(pb)


def test_upstream_write_buffer_high_disables_every_feeding_downstream() -> None:
    up = placeholder("up")
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> Accepted(3, "main")  # feeds nothing
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb >> DataReceived(2, req(2))
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2))
    pb >> WriteBufferHigh(up)
    pb << ReadDisable(1)
    pb << ReadDisable(2)
    pb << None
    pb >> DataReceived(3, req(3))  # a new feeder is held back too
    pb << Write(up, req(3))
    pb << ReadDisable(3)
    pb >> WriteBufferLow(up)
    pb << ReadEnable(1)
    pb << ReadEnable(2)
    pb << ReadEnable(3)
    pb >> WriteBufferLow(up)  # only the 1 -> 0 transition emits
    pb << None
    pb >> DataReceived(up, resp(1) + resp(2) + resp(3))
    pb << Write(1, resp(1))
    pb << Write(2, resp(2))
    pb << Write(3, resp(3))
    finish(pb, 1, 2, 3, up)


def test_a_client_feeding_two_full_upstreams_waits_for_both() -> None:
    other = ("10.0.0.2", 9000)
    routes = (route("a", "a", service="a"), route("b", "b", service="b"))
    clusters = (ClusterConfig("a", (Endpoint(*UP),)), ClusterConfig("b", (Endpoint(*other),)))
    pb = connected(playbook(config(routes, clusters)))
    pb >> DataReceived(1, req(1, service="a") + req(2, service="b"))
    to_a, to_b = placeholder("to_a"), placeholder("to_b")
    pb << OpenUpstream(to_a, *UP) << OpenUpstream(to_b, *other)
    pb >> UpstreamConnected(to_a) >> UpstreamConnected(to_b)
    pb << Write(to_a, req(1, service="a")) << Write(to_b, req(2, service="b"))
    pb >> WriteBufferHigh(to_a)
    pb << ReadDisable(1)
    pb >> WriteBufferHigh(to_b)  # the same reason again: no second ReadDisable
    pb >> WriteBufferLow(to_a)
    pb << None  # to_b still holds the client back
    pb >> WriteBufferHigh(to_a)
    pb >> Closed(to_b)  # gone: it holds nothing back any more, but to_a does
    pb << Write(1, error_reply(2, "upstream_reset", "upstream connection closed", 7))
    pb << None
    pb >> WriteBufferLow(to_a)
    pb << ReadEnable(1)
    pb >> DataReceived(to_a, resp(1))
    pb << Write(1, resp(1))
    finish(pb, 1, to_a)


def test_too_many_pending_disables_reading_then_enables() -> None:
    up = placeholder("up")
    pb = connected(playbook(config(max_pending_requests=2)))
    pb >> DataReceived(1, req(1) + req(2) + req(3))
    pb << OpenUpstream(up, *UP)
    pb << ReadDisable(1)  # the third request waits in the buffer
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2))
    pb >> DataReceived(up, resp(1))
    pb << Write(1, resp(1))
    pb << ReadEnable(1)
    pb << Write(up, req(3))  # decoding resumed
    pb >> DataReceived(up, resp(2) + resp(3))
    pb << Write(1, resp(2))
    pb << Write(1, resp(3))
    finish(pb, 1, up)


def test_disable_reasons_are_counted_once_each() -> None:
    up = placeholder("up")
    pb = connected(playbook(config(max_pending_requests=1)))
    pb >> DataReceived(1, req(1) + req(2))
    pb << OpenUpstream(up, *UP)
    pb << ReadDisable(1)
    pb >> WriteBufferHigh(1)  # a second reason: no second ReadDisable for the client...
    pb << ReadDisable(up)  # ...but the upstream owing it an answer is held off
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1))
    pb >> DataReceived(up, resp(1))  # bytes already read are still delivered
    pb << Write(1, resp(1))
    pb << None  # pending reason gone, but a client above its watermark gets nothing decoded
    pb >> WriteBufferLow(1)
    pb << ReadEnable(1)
    pb << ReadEnable(up)
    pb << Write(up, req(2))  # what waited in its read buffer is decoded now
    pb >> DataReceived(up, resp(2))
    pb << Write(1, resp(2))
    finish(pb, 1, up)


def test_downstream_closed_mid_flight_leaves_nothing_behind() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, req(1) + req(2))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2))
    pb >> Closed(1)
    pb << None
    assert pb.proxy.request_count() == 0
    assert pb.proxy.stats.counter("cx_destroy_remote_with_active_rq", (("listener", "main"),)) == 1
    pb >> DataReceived(up, resp(1) + resp(2))  # answers for nobody are dropped
    pb << None
    finish(pb, up)


def test_end_of_stream_from_a_client_abandons_its_requests() -> None:
    up = placeholder("up")
    pb = connected(playbook())
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb >> EofReceived(1)
    pb << CloseConnection(1, flush=True)
    assert pb.proxy.request_count() == 0
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1))  # it was on its way already
    pb >> DataReceived(up, resp(1))
    pb << None  # and its answer is dropped
    finish(pb, up)


def test_connect_timeout_gives_error_reply() -> None:
    up = placeholder("up")
    clusters = (ClusterConfig("main", (Endpoint(*UP),), connect_timeout=1.0),)
    pb = connected(playbook(config(clusters=clusters)))
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb.tick(1.0)
    pb << CloseConnection(up, flush=False)
    pb << Write(1, error_reply(1, "connect_failure", "connect timeout", 8))
    finish(pb, 1)


def test_undecodable_bytes_give_error_reply_and_close() -> None:
    pb = connected(playbook())
    garbage = b"\x00\x00\x00\x20\x63" + b"\x00" * 40
    pb >> DataReceived(1, garbage)
    pb << Write(1, error_reply(0, "bad_request", "bad frame: unknown kind 99", 10))
    pb << CloseConnection(1, flush=True)
    finish(pb)

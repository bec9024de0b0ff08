"""Behaviour the suite used to leave unguarded (each test fails if its code is deleted): a
stream frame for a stream whose first frame still waits on a filter (kept and sent after
it, no longer refused and dropped), a route's hash_policy
reaching the consistent-hashing balancers, and the max_connections / max_pending_requests
circuit breakers."""

from __future__ import annotations

import pytest

from metaprotocol.core.config import (
    CircuitBreakers,
    ClusterConfig,
    Endpoint,
    GlobalRateLimitConfig,
    LbPolicy,
    RouteAction,
)
from metaprotocol.core.events import (
    Accepted,
    DataReceived,
    ExternalCallCompleted,
    UpstreamConnected,
)
from metaprotocol.core.outputs import ExternalCall, OpenUpstream, Output, Routed, Write
from metaprotocol.core.proxy import Proxy

from .helpers import config, error_reply, req, route
from .test_trpc_streams import FUNC, data, init

A = ("10.0.0.1", 9000)
B = ("10.0.0.2", 9000)
CLUSTER = (("cluster", "main"),)


def writes_to(out: list[Output], conn: int) -> list[bytes]:
    return [o.data for o in out if isinstance(o, Write) and o.conn == conn]


def paused_stream(proxy: Proxy) -> ExternalCall:
    """A tRPC stream whose INIT waits on the rate-limit service."""
    proxy.handle(Accepted(1, "main"), 0.0)
    out = proxy.handle(DataReceived(1, init(100)), 0.0)
    (call,) = [o for o in out if isinstance(o, ExternalCall)]
    return call


def rate_limited_streams() -> Proxy:
    grl = GlobalRateLimitConfig("d", ("func",), requests_per_unit=5, timeout=1.0)
    return Proxy(config(codec="trpc", routes=(route(func=FUNC),), filters=(grl,)), now=0.0)


def test_a_stream_frame_while_its_init_waits_on_a_filter_follows_the_init() -> None:
    proxy = rate_limited_streams()
    call = paused_stream(proxy)
    # A DATA frame of the stream arrives while its INIT is still paused: it is kept, not
    # refused (the client gets no error) and not sent ahead of the INIT.
    out = proxy.handle(DataReceived(1, data(100, b"early")), 0.0)
    assert out == []
    out = proxy.handle(ExternalCallCompleted(call.call, True), 0.0)
    (opened,) = [o for o in out if isinstance(o, OpenUpstream)]
    out = proxy.handle(UpstreamConnected(opened.conn), 0.0)
    # The INIT goes upstream, then the frame that waited for it, in the order sent.
    assert b"".join(writes_to(out, opened.conn)) == init(100) + data(100, b"early")
    assert writes_to(out, 1) == []
    # A frame after that goes straight through.
    out = proxy.handle(DataReceived(1, data(100, b"later")), 0.0)
    assert writes_to(out, opened.conn) == [data(100, b"later")]


def test_the_held_frames_of_a_stream_the_filter_refuses_go_nowhere() -> None:
    proxy = rate_limited_streams()
    call = paused_stream(proxy)
    proxy.handle(DataReceived(1, data(100, b"early")), 0.0)
    out = proxy.handle(ExternalCallCompleted(call.call, False), 0.0)  # over the limit
    assert not [o for o in out if isinstance(o, OpenUpstream)]
    (refusal,) = writes_to(out, 1)  # the stream's one answer: the limit's error reply
    assert b"early" not in refusal
    assert proxy.request_count() == 0


def test_a_client_may_not_make_the_proxy_hold_unbounded_early_stream_data() -> None:
    proxy = rate_limited_streams()
    limit = proxy.config.listeners[0].max_message_size
    paused_stream(proxy)
    chunk = b"x" * (limit // 4)
    outs = [proxy.handle(DataReceived(1, data(100, chunk)), 0.0) for _ in range(6)]
    refusals = [w for out in outs for w in writes_to(out, 1)]
    assert refusals and all(b"before the stream was opened" in w for w in refusals)


def endpoints_of(proxy: Proxy, users: list[str]) -> list[str]:
    """Where each request (one per user, on its own connection) was routed."""
    picked = []
    for conn, user in enumerate(users, start=1):
        proxy.handle(Accepted(conn, "main"), 0.0)
        out = proxy.handle(DataReceived(conn, req(conn, user=user)), 0.0)
        (routed,) = [o for o in out if isinstance(o, Routed)]
        picked.append(routed.endpoint)
    return picked


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_a_routes_hash_policy_reaches_the_consistent_hashing_balancers(policy: LbPolicy) -> None:
    endpoints = tuple(Endpoint(f"10.0.0.{i}", 9000) for i in range(1, 9))
    clusters = (ClusterConfig("main", endpoints, lb_policy=policy),)
    action = RouteAction(cluster="main", hash_policy=("user",))
    proxy = Proxy(config(routes=(route(action=action),), clusters=clusters), now=0.0)
    same = endpoints_of(proxy, ["alice"] * 6)
    assert len(set(same)) == 1  # the same key always lands on the same endpoint
    spread = endpoints_of(proxy, [f"user-{i}" for i in range(40)])
    assert len(set(spread)) >= 3  # different keys spread over the endpoints


def test_max_connections_breaker_answers_over_limit() -> None:
    breakers = CircuitBreakers(max_connections=1)
    clusters = (ClusterConfig("main", (Endpoint(*A), Endpoint(*B)), circuit_breakers=breakers),)
    proxy = Proxy(config(clusters=clusters), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    out = proxy.handle(DataReceived(1, req(1) + req(2)), 0.0)
    # Round robin: request 1 opens the one connection allowed; request 2 goes to the other
    # endpoint, which may not open another.
    assert len([o for o in out if isinstance(o, OpenUpstream)]) == 1
    detail = "cluster max_connections reached"
    assert writes_to(out, 1) == [error_reply(2, "over_limit", detail, 5)]
    assert proxy.stats.counter("upstream_cx_overflow", CLUSTER) == 1


def test_max_pending_requests_breaker_answers_over_limit() -> None:
    breakers = CircuitBreakers(max_pending_requests=1)
    clusters = (ClusterConfig("main", (Endpoint(*A),), circuit_breakers=breakers),)
    proxy = Proxy(config(clusters=clusters), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    # The connection is still opening: one request may wait for it, the second may not.
    out = proxy.handle(DataReceived(1, req(1) + req(2)), 0.0)
    assert [o for o in out if isinstance(o, OpenUpstream)] == [OpenUpstream(-1, *A)]
    detail = "too many pending requests"
    assert writes_to(out, 1) == [error_reply(2, "over_limit", detail, 5)]
    assert proxy.stats.counter("upstream_rq_pending_overflow", CLUSTER) == 1

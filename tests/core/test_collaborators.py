"""Each collaborator of the engine on its own, built from the pieces below it and no
``Proxy`` (docs/architecture.md, "The parts of the core")."""

from __future__ import annotations

from typing import cast

from metaprotocol.codecs.registry import get_codec
from metaprotocol.core.codec import CodecFactory, DecodesMany, Side
from metaprotocol.core.config import (
    CircuitBreakers,
    ClusterConfig,
    Config,
    Endpoint,
    GlobalRateLimitConfig,
)
from metaprotocol.core.context import Context
from metaprotocol.core.downstream import Downstreams
from metaprotocol.core.filterchain import FilterChain
from metaprotocol.core.flow import FlowControl, Reason
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.merging import PipelineMerge
from metaprotocol.core.message import NEED_DATA, ErrorType, Message
from metaprotocol.core.outputs import (
    ExternalCall,
    OpenUpstream,
    ReadDisable,
    ReadEnable,
    Write,
)
from metaprotocol.core.pools import QUEUED, Pools, Rejected
from metaprotocol.core.replies import Replies
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.router import Router
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.sender import Sender
from metaprotocol.core.state import ActiveRequest, Downstream, Upstream
from metaprotocol.core.tables import attach_request
from metaprotocol.core.upstream_side import UpstreamSide

from .helpers import UP, bulk, cmd, config, error_reply, req, resp, route
from .test_ordered_and_streams import ExclusiveCodec

MAIN = (("cluster", "main"),)


def codec_named(name: str) -> CodecFactory:
    return ExclusiveCodec if name == "exclusive" else get_codec(name)


def context(cfg: Config | None = None) -> Context:
    ctx = Context(0.0, lambda: 0.0, observe=False)
    ctx.runtime = Runtime(cfg or config(), ctx.stats, ctx.random, codec_named, 0.0)
    return ctx


def client(ctx: Context, conn: int = 1) -> Downstream:
    listener = ctx.runtime.listeners["main"]
    lc = listener.config
    codec = listener.codec_factory(Side.DOWNSTREAM, lc.codec_options, lc.max_message_size)
    ds = Downstream(conn, listener, codec, 0.0)
    ctx.attach_downstream(ds)
    return ds


def request(ds: Downstream, frame: bytes) -> ActiveRequest:
    """``frame`` decoded on ``ds`` and waiting there for its answer."""
    msg = ds.codec.decode(bytearray(frame))
    assert isinstance(msg, Message)
    r = ActiveRequest(ds, ds.listener, msg, 0.0)
    attach_request(ds, r)
    return r


def routed(ctx: Context, r: ActiveRequest) -> ActiveRequest:
    r.route = r.listener.routes[0]
    r.cluster = ctx.runtime.clusters["main"]
    advance(r, RequestState.ROUTED)
    return r


class Wiring:
    """The collaborators below the router, as the facade builds them."""

    def __init__(self, ctx: Context) -> None:
        self.flow = FlowControl(ctx.out)
        self.lifecycle = RequestLifecycle(ctx)
        self.replies = Replies(ctx, self.lifecycle, self.flow)
        self.pools = Pools(ctx, self.flow)
        self.sender = Sender(ctx, self.lifecycle, self.replies, self.pools, self.flow)
        self.merge = PipelineMerge(ctx.out)


def test_context_attach_and_detach_keep_the_closed_field() -> None:
    ctx = context()
    ds = client(ctx)
    assert ctx.downstreams == {1: ds} and not ds.closed
    ctx.detach_downstream(ds)
    assert ds.closed and not ctx.downstreams
    assert ds.listener.counters.downstream_cx_active == 0


def test_flow_control_counts_reasons_and_emits_on_the_edges() -> None:
    ctx = context()
    ds = client(ctx)
    flow = FlowControl(ctx.out)
    flow.disable(ds, Reason.TOO_MANY_PENDING)
    flow.disable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
    flow.enable(ds, Reason.TOO_MANY_PENDING)
    assert ctx.out == [ReadDisable(1)]  # still one reason left
    flow.enable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
    assert ctx.out == [ReadDisable(1), ReadEnable(1)]


def test_finish_detaches_a_request_from_every_table_once() -> None:
    ctx = context()
    ds = client(ctx)
    r = request(ds, req(7))
    call = ctx.attach_call(r, lambda result, error: None)
    lifecycle = RequestLifecycle(ctx)
    assert lifecycle.finish(r, "abandoned", None, 1.0) is None  # observe off: no event
    assert r.state is RequestState.ABANDONED and r.done
    assert not ds.active and ds.pending == 0 and call not in ctx.calls and r.call is None
    assert ds.listener.counters.active_requests == 0
    before = ds.listener.duration.count
    lifecycle.finish(r, "ok", None, 2.0)  # finishing again changes nothing
    assert ds.listener.duration.count == before


def test_replies_keep_the_order_of_an_ordered_protocol() -> None:
    ctx = context(config(codec="redis"))
    ds = client(ctx)
    flow = FlowControl(ctx.out)
    replies = Replies(ctx, RequestLifecycle(ctx), flow)
    first, second = request(ds, cmd("GET", "a")), request(ds, cmd("GET", "b"))
    for r in (first, second):  # as if sent upstream
        advance(r, RequestState.ROUTED)
        advance(r, RequestState.SENT)
    replies.answer(second, bulk("b"), "ok", None, 0.0)
    assert ctx.out == []  # held behind the first
    replies.answer(first, bulk("a"), "ok", None, 0.0)
    assert ctx.out == [Write(1, bulk("a") + bulk("b"))]
    assert ds.held == 0 and not ds.active


def test_a_local_reply_is_the_codecs_error_reply() -> None:
    ctx = context()
    ds = client(ctx)
    replies = Replies(ctx, RequestLifecycle(ctx), FlowControl(ctx.out))
    r = request(ds, req(3))
    replies.local_reply(r, ErrorType.OVER_LIMIT, "no", 0.0)
    assert ctx.out == [Write(1, error_reply(3, "over_limit", "no", 5))]
    assert r.state is RequestState.FAILED


def test_pools_return_an_outcome_and_never_answer_the_client() -> None:
    breakers = CircuitBreakers(max_connections=0)
    cfg = config(clusters=(ClusterConfig("main", (Endpoint(*UP),), circuit_breakers=breakers),))
    ctx = context(cfg)
    pools = Pools(ctx, FlowControl(ctx.out))
    r = routed(ctx, request(client(ctx), req(1)))
    cluster = ctx.runtime.clusters["main"]
    outcome = pools.acquire(r, cluster.endpoints[0], 0.0)
    assert isinstance(outcome, Rejected) and outcome.error is ErrorType.OVER_LIMIT
    assert ctx.out == [] and not r.done  # the caller decides what the client gets
    assert ctx.stats.counter("upstream_cx_overflow", MAIN) == 1


def test_an_exclusive_pool_queues_a_request_when_it_may_not_open() -> None:
    cfg = config(
        codec="exclusive",
        clusters=(ClusterConfig("main", (Endpoint(*UP),), max_connections_per_endpoint=1),),
    )
    ctx = context(cfg)
    pools = Pools(ctx, FlowControl(ctx.out))
    ds = client(ctx)
    first, second = routed(ctx, request(ds, req(1))), routed(ctx, request(ds, req(2)))
    pool = pools.pool(first, ctx.runtime.clusters["main"].endpoints[0])
    up = pools.acquire_from(pool, first, 0.0)
    assert isinstance(up, Upstream) and ctx.out == [OpenUpstream(-1, *UP)]
    up.fifo.append(first)  # busy with the first request
    assert pools.acquire_from(pool, second, 0.0) is QUEUED
    assert list(pool.waiting) == [second] and second.state is RequestState.QUEUED


def test_sender_encodes_for_a_new_connection_and_queues_until_connected() -> None:
    ctx = context()
    parts = Wiring(ctx)
    r = routed(ctx, request(client(ctx), req(5, b"hi")))
    parts.sender.send(r, 0.0)
    assert ctx.out == [OpenUpstream(-1, *UP)]
    up = ctx.upstreams[-1]
    assert r.state is RequestState.SENT and up.inflight == {5: r} and up.queued == [req(5, b"hi")]


def test_router_answers_a_request_no_route_matches() -> None:
    ctx = context(config(routes=(route(service="users"),)))
    parts = Wiring(ctx)
    router = Router(ctx, parts.replies, parts.sender)
    r = request(client(ctx), req(2, service="orders"))
    router.route(r, 0.0)
    assert ctx.out == [Write(1, error_reply(2, "route_not_found", "no route matched", 1))]


def test_filter_chain_pauses_on_an_external_call_then_routes() -> None:
    grl = GlobalRateLimitConfig("d", ("service",), requests_per_unit=5, timeout=1.0)
    ctx = context(config(filters=(grl,)))
    parts = Wiring(ctx)
    chain = FilterChain(ctx, parts.replies, Router(ctx, parts.replies, parts.sender))
    r = request(client(ctx), req(1, service="users"))
    advance(r, RequestState.FILTERING)
    chain.run(r, 0.0)
    (call,) = ctx.out
    assert isinstance(call, ExternalCall) and ctx.calls[call.call].request is r
    ctx.out.clear()
    chain.call_completed(call.call, True, "", 0.0)
    assert ctx.out == [OpenUpstream(-1, *UP)] and not ctx.calls


def test_upstream_side_matches_a_response_to_its_request() -> None:
    ctx = context()
    parts = Wiring(ctx)
    side = UpstreamSide(
        ctx, parts.lifecycle, parts.replies, parts.pools, parts.sender, parts.flow, parts.merge
    )
    ds = client(ctx)
    r = routed(ctx, request(ds, req(9)))
    parts.sender.send(r, 0.0)
    side.connected(-1, 0.0)
    ctx.out.clear()
    side.data(ctx.upstreams[-1], resp(9, b"done"), 0.0)
    assert ctx.out == [Write(1, resp(9, b"done"))]
    assert r.state is RequestState.ANSWERED and not ds.active


def test_downstreams_decode_a_request_and_hand_it_on() -> None:
    ctx = context()
    parts = Wiring(ctx)
    router = Router(ctx, parts.replies, parts.sender)
    chain = FilterChain(ctx, parts.replies, router)
    downstreams = Downstreams(
        ctx, parts.lifecycle, parts.replies, parts.flow, chain, router, parts.merge
    )
    downstreams.accepted(1, "main", "", 0.0)
    ds = ctx.downstreams[1]
    ds.buffer += req(4)[:3]
    downstreams.decode(ds, 0.0)
    assert ctx.out == [] and ds.codec.decode(bytearray(b"")) is NEED_DATA
    ds.buffer += req(4)[3:]
    downstreams.decode(ds, 0.0)
    assert ctx.out == [OpenUpstream(-1, *UP)]
    (r,) = ds.active
    assert r.state is RequestState.SENT


def test_pipeline_merge_decides_a_run_and_joins_its_answers() -> None:
    ctx = context(config(codec="redis"))
    ds = client(ctx)
    merge = PipelineMerge(ctx.out)
    run = merge.begin(ds.listener, ctx.runtime.clusters)
    pipeline = bytearray(cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    merged = cast(DecodesMany, ds.codec).decode_many(pipeline, 100, run)
    assert isinstance(merged, Message) and merged.count == 3
    r = routed(ctx, ActiveRequest(ds, ds.listener, merged, 0.0))
    pools = Pools(ctx, FlowControl(ctx.out))
    up = pools.open(pools.pool(r, ctx.runtime.clusters["main"].endpoints[0]), 0.0)
    ctx.out.clear()
    first = up.codec.decode(bytearray(bulk("a")))
    assert isinstance(first, Message)
    assert merge.waits_for_more(r, first)
    assert merge.answer_part(up, r, first)  # held: the caller checks the client's limit
    assert ctx.out == [] and merge.answered_in_part(r) and ds.held == len(bulk("a"))
    assert merge.whole(r, bulk("b") + bulk("c")) == bulk("a") + bulk("b") + bulk("c")
    assert ds.held == 0
    assert merge.error(r, b"-ERR x\r\n") == bulk("a") + b"-ERR x\r\n" * 2  # two still owed

"""From a routed request to bytes on an upstream connection: the cluster's request breaker,
the endpoint pick, the pool's outcome, and encoding (docs/architecture.md)."""

from __future__ import annotations

from typing import Final

from metaprotocol.core.balancer import EndpointState
from metaprotocol.core.codec import Codec, Ordering, codec_failure
from metaprotocol.core.context import Context, write
from metaprotocol.core.fanout import narrowing
from metaprotocol.core.flow import FlowControl
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.message import ErrorType, Message, MessageType, Mutation, ProtocolError
from metaprotocol.core.pools import Pools, Rejected
from metaprotocol.core.replies import Replies
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.routing import hash_key
from metaprotocol.core.slotrouting import ASKING, ClusterHop
from metaprotocol.core.state import ActiveRequest, Pool, Upstream
from metaprotocol.core.tables import attach_sent
from metaprotocol.core.tracing import TraceSpan, with_traceparent

__all__ = ["ID_SPACE", "Sender"]

ID_SPACE: Final = 2**31 - 1  # request ids we allocate fit every protocol's id field (Thrift: i32)
# Enum members as module constants: a compiled build reads these without a class lookup.
_ONEWAY: Final = MessageType.ONEWAY
_MULTIPLEXED: Final = Ordering.MULTIPLEXED
_SENT: Final = RequestState.SENT


class Sender:
    """Sends routed requests: ``send`` (pick an endpoint, get a connection from its pool)
    and ``dispatch`` (encode for that connection and write)."""

    __slots__ = ("flow", "lifecycle", "out", "pools", "replies", "stats")

    def __init__(
        self,
        ctx: Context,
        lifecycle: RequestLifecycle,
        replies: Replies,
        pools: Pools,
        flow: FlowControl,
    ) -> None:
        self.out = ctx.out
        self.stats = ctx.stats
        self.lifecycle = lifecycle
        self.replies = replies
        self.pools = pools
        self.flow = flow

    def send(self, req: ActiveRequest, now: float) -> None:
        """Pick an endpoint of ``req.cluster`` and hand the request to its pool (a
        ``ROUTED`` request: first sent, retried or resent)."""
        cluster = req.cluster
        route = req.route
        assert cluster is not None and route is not None
        # A merged message counts as the requests it stands for, and fits whole or not at all.
        if (
            cluster.active_requests + req.message.count
            > cluster.config.circuit_breakers.max_requests
        ):
            cluster.counters.upstream_rq_pending_overflow += 1
            self.replies.local_reply(req, ErrorType.OVER_LIMIT, "cluster max_requests reached", now)
            return
        action = route.action
        endpoints = cluster.endpoints
        slots = cluster.slots
        endpoint: EndpointState | None = None
        if slots is not None:  # a Redis Cluster: the key's slot picks the node
            endpoint, replica = slots.pick(req.hop, req.message.properties, req.tried)
            if replica or (req.hop is not None and req.hop.readonly):
                hop = req.hop
                if hop is None:
                    hop = req.hop = ClusterHop(None)
                hop.readonly = replica
        if endpoint is not None:
            pass
        elif len(endpoints) == 1 and not req.tried and endpoints[0].ejected_until <= now:
            endpoint = endpoints[0]  # one endpoint: nothing to balance
        else:
            key = (
                hash_key(action, req.message.properties, narrowing(req.listener))
                if action.hash_policy
                else None
            )
            endpoint = cluster.balancer.pick(now, key, req.tried)
        if endpoint is None:
            self.replies.local_reply(req, ErrorType.NO_HEALTHY_UPSTREAM, "no healthy upstream", now)
            return
        outcome = self.pools.acquire(req, endpoint, now)
        if type(outcome) is Upstream:
            self.dispatch(req, outcome, now)
        elif isinstance(outcome, Rejected):
            self.replies.local_reply(req, outcome.error, outcome.detail, now)
        # else QUEUED: it waits in the pool (serve_waiting)

    def serve_waiting(self, pool: Pool, now: float) -> None:
        """Hand the requests waiting in an exclusive pool to its free connections."""
        while pool.waiting:
            free = self.pools.free_connection(pool)
            if free is None:
                return
            req = pool.waiting.popleft()
            if not req.done:
                self.dispatch(req, free, now)

    def dispatch(self, req: ActiveRequest, up: Upstream, now: float) -> None:
        """Encode the request for ``up`` and write it (or queue it until connected)."""
        pool = up.pool
        req.pool = pool
        if req.endpoint is None:
            self.pools.claim(req, pool, now)
        msg = req.message
        route = req.route
        assert route is not None
        mutation = route.action.request_mutation
        up_id: int | None = None
        new_id: int | None = None
        oneway = msg.type is _ONEWAY
        if pool.ordering is _MULTIPLEXED and not oneway:
            up_id = msg.request_id
            if up_id is None or up_id in up.inflight or up_id in up.streams:
                up_id = _free_id(up)
                new_id = up_id
        try:
            if req.span is not None and pool.codec_factory.supports_mutation:
                data = _encode_traced(up.codec, msg, new_id, mutation, req.span)
            else:
                data = up.codec.encode(msg, request_id=new_id, mutation=mutation)
            hop = req.hop
            if hop is not None and hop.asking:  # after -ASK: ASKING, then the command
                data = ASKING + data
        except ProtocolError as exc:
            self.replies.local_reply(req, exc.error_type, str(exc), now)
            return
        except Exception as bug:  # a codec bug: the request is answered, not lost
            # (its own name: mypyc gives ``exc`` the first clause's type)
            self.stats.inc("codec_error")
            failure = codec_failure(up.codec, "encode", bug)
            self.replies.local_reply(req, failure.error_type, str(failure), now)
            return
        if oneway:
            req.upstream = up
            advance(req, _SENT)
            self.lifecycle.finish(req, "oneway", None, now)
        else:
            attach_sent(up, req, up_id)
            advance(req, _SENT)
        if req.early is not None:  # stream frames that came while it waited
            data = b"".join([data, *self._follow(req, up, up_id)])
        if up.connected:
            self.out.append(write(up.id, data))
        else:
            up.queued.append(data)
        if up.paused:  # held off for slow readers only: this request's client waits too
            self.flow.resume_upstream(up)
        if up.write_high and req.downstream is not None:
            self.flow.hold_feeder(up, req.downstream)

    def _follow(self, req: ActiveRequest, up: Upstream, up_id: int | None) -> list[bytes]:
        """The stream frames held for ``req`` until it was sent, encoded for ``up``."""
        early = req.early or []
        req.early = None
        sid = req.message.request_id
        new_id = up_id if up_id != sid else None
        frames: list[bytes] = []
        for frame in early:
            try:
                frames.append(up.codec.encode(frame, request_id=new_id))
            except Exception:  # a codec bug (the init frame encoded): the frame is lost
                self.stats.inc("codec_error")
        return frames


def _encode_traced(
    codec: Codec,
    msg: Message,
    new_id: int | None,
    mutation: Mutation | None,
    span: TraceSpan,
) -> bytes:
    """The request carrying the proxy's span as its trace context; as it would go without
    tracing if the codec cannot add it to this message (a non-Hessian2 Dubbo body, say)."""
    try:
        return codec.encode(msg, request_id=new_id, mutation=with_traceparent(mutation, span))
    except ProtocolError:
        return codec.encode(msg, request_id=new_id, mutation=mutation)


def _free_id(up: Upstream) -> int:
    while True:
        candidate = up.next_id
        up.next_id = candidate % ID_SPACE + 1
        if candidate not in up.inflight and candidate not in up.streams:
            return candidate

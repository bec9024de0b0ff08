"""The upstream side: connections coming up, responses matched to their requests and
answered, and every way an upstream connection fails, with retries and resends
(docs/architecture.md)."""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.balancer import EndpointState
from metaprotocol.core.codec import Codec, DecodesAtEof, Ordering, codec_failure
from metaprotocol.core.context import Context, write
from metaprotocol.core.flow import FlowControl
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.merging import PipelineMerge
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    EndpointConnectFailed,
    EndpointEjected,
    RefreshSlotMap,
)
from metaprotocol.core.pools import Pools
from metaprotocol.core.replies import Replies
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.sender import Sender
from metaprotocol.core.slotrouting import ClusterHop
from metaprotocol.core.state import ActiveRequest, Upstream
from metaprotocol.core.tables import detach_endpoint, detach_upstream_tables

__all__ = ["UpstreamSide"]

_ANSWERED: Final = RequestState.ANSWERED  # the first final state (``req.done``)
# Enum members as module constants: a compiled build reads these without a class lookup.
_HEARTBEAT: Final = MessageType.HEARTBEAT
_STREAM_DATA: Final = MessageType.STREAM_DATA
_STREAM_CLOSE: Final = MessageType.STREAM_CLOSE
_MULTIPLEXED: Final = Ordering.MULTIPLEXED
_OK: Final = ResponseStatus.OK
_ERROR: Final = ResponseStatus.ERROR


class UpstreamSide:
    """Everything that happens on upstream connections after a request was written."""

    __slots__ = ("ctx", "flow", "lifecycle", "merge", "out", "pools", "replies", "sender")

    def __init__(
        self,
        ctx: Context,
        lifecycle: RequestLifecycle,
        replies: Replies,
        pools: Pools,
        sender: Sender,
        flow: FlowControl,
        merge: PipelineMerge,
    ) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.lifecycle = lifecycle
        self.replies = replies
        self.pools = pools
        self.sender = sender
        self.flow = flow
        self.merge = merge

    # -- connection events -------------------------------------------------------------------

    def connect_failed(self, up: Upstream, detail: str, now: float) -> None:
        """``up`` could not be opened, or its opening (a login) was refused: a connect failure
        (retry and outlier rules apply). ``detail`` goes to the adapter's log only."""
        pool = up.pool
        pool.cluster.counters.upstream_cx_connect_fail += 1
        self.out.append(
            EndpointConnectFailed(pool.cluster.config.name, pool.endpoint.label, detail)
        )
        if pool.cluster.slots is not None:  # a Redis Cluster node is down: ask who serves
            self.out.append(RefreshSlotMap(pool.cluster.config.name))
        self.gone(up, ErrorType.CONNECT_FAILURE, "connect failed", now)

    def connect_timeout(self, up: Upstream, now: float) -> None:
        up.connect_timer = None
        if not up.closed and not up.connected:
            pool = up.pool
            pool.cluster.counters.upstream_cx_connect_timeout += 1
            self.out.append(
                EndpointConnectFailed(pool.cluster.config.name, pool.endpoint.label, "timed out")
            )
            self.out.append(CloseConnection(up.id, flush=False))
            self.gone(up, ErrorType.CONNECT_FAILURE, "connect timeout", now)

    def ended(self, up: Upstream, eof: bool, now: float) -> None:
        """The server closed ``up`` (``eof``: half-closed, we close our side) or it is gone."""
        # A response framed by the connection closing (HTTP/1.0 style) ends here.
        if up.pool.caps.decode_eof and up.buffer:
            try:
                last = cast(DecodesAtEof, up.codec).decode_eof(up.buffer)
            except Exception as exc:  # the response is incomplete (or the codec buggy)
                if not isinstance(exc, ProtocolError):
                    self.ctx.stats.inc("codec_error")
                last = None
            if last is not None:
                self.on_response(up, last, now)
        if up.closed:
            return
        if eof:
            self.out.append(CloseConnection(up.id, flush=False))
        self.gone(up, ErrorType.UPSTREAM_RESET, "upstream connection closed", now)

    def _stream_frame(self, up: Upstream, msg: Message, now: float) -> None:
        """A data or close frame of a stream, from the server to its client."""
        uid = msg.request_id
        init = up.streams.get(uid) if uid is not None else None
        if init is None:
            up.pool.cluster.counters.response_dropped += 1
            return
        ds = init.downstream
        if msg.type is MessageType.STREAM_CLOSE:
            up.streams.pop(uid, None)  # type: ignore[arg-type]
        if ds is None or ds.closed:
            return
        orig = init.message.request_id
        data = ds.codec.encode(msg, request_id=orig if orig != uid else None)
        if msg.type is MessageType.STREAM_CLOSE:
            if orig is not None:
                ds.streams.pop(orig, None)
            self.replies.answer(init, data, "ok", None, now)
        else:
            self.out.append(write(ds.id, data))
            if ds.unread is not None:
                ds.unread += len(data)
                self.replies.over_limit(ds)

    # -- upstream side -----------------------------------------------------------------------

    def connected(self, conn: int, now: float) -> None:
        up = self.ctx.upstreams.get(conn)
        if up is None or up.connected:
            return
        up.connected = True
        if up.connect_timer is not None:
            up.connect_timer.cancel()
            up.connect_timer = None
        pool = up.pool
        pool.cluster.counters.upstream_cx_active += 1
        if up.queued:
            self.out.append(write(conn, b"".join(up.queued)))
            up.queued.clear()
        if pool.ordering is Ordering.EXCLUSIVE:
            self.sender.serve_waiting(pool, now)

    def data(self, up: Upstream, data: bytes, now: float) -> None:
        up.buffer += data
        codec = up.codec
        buffer = up.buffer
        fifo = up.fifo
        while buffer:
            try:
                if fifo and fifo[0].remaining > 1:  # answers to a merged message: merge them
                    msg = self.merge.decode_answers(codec, buffer, fifo[0])
                else:
                    msg = codec.decode(buffer)
            except Exception as exc:  # ProtocolError, or a codec bug: the same way out
                if not isinstance(exc, ProtocolError):
                    self.ctx.stats.inc("codec_error")
                    exc = codec_failure(codec, "decode", exc)
                elif exc.error_type is ErrorType.CONNECT_FAILURE:
                    # The server refused what the connection opened with (Redis: the login).
                    self.out.append(CloseConnection(up.id, flush=False))
                    self.connect_failed(up, str(exc), now)
                    return
                up.pool.cluster.counters.response_decoding_error += 1
                self.out.append(CloseConnection(up.id, flush=False))
                self.gone(up, ErrorType.BAD_RESPONSE, str(exc), now)
                return
            if msg is NEED_DATA:
                if len(buffer) > up.pool.max_message_size:
                    up.pool.cluster.counters.response_decoding_error += 1
                    self.out.append(CloseConnection(up.id, flush=False))
                    self.gone(up, ErrorType.BAD_RESPONSE, "response too large", now)
                return
            self.on_response(up, msg, now)
            if up.closed:
                return

    def on_response(self, up: Upstream, msg: Message, now: float) -> None:
        mtype = msg.type
        if mtype is _HEARTBEAT:
            reply = self.replies.heartbeat_reply(up.codec, msg)
            if reply is not None:
                self.out.append(write(up.id, reply))
            return  # upstream heartbeats never reach clients
        if mtype is _STREAM_DATA or mtype is _STREAM_CLOSE:
            self._stream_frame(up, msg, now)
            return
        if msg.properties.get("push") == "1":
            return  # out-of-band (RESP3 push): not an answer to any request
        cluster_counters = up.pool.cluster.counters
        merge = self.merge
        if up.pool.ordering is _MULTIPLEXED:
            rid = msg.request_id
            req = up.inflight.pop(rid, None) if rid is not None else None
            if req is None and rid is not None:
                req = up.streams.get(rid)
        else:
            fifo = up.fifo
            if not fifo:
                cluster_counters.response_decoding_error += 1
                self.out.append(CloseConnection(up.id, flush=False))
                self.gone(up, ErrorType.BAD_RESPONSE, "unsolicited response", now)
                return
            req = fifo[0]
            hop = req.hop
            if hop is not None and hop.asking:  # the +OK to ASKING (core/slotrouting.py)
                hop.asking = False
                return
            if merge.waits_for_more(req, msg):  # a merged message: not all its answers yet
                if merge.answer_part(up, req, msg) and req.downstream is not None:
                    self.replies.over_limit(req.downstream)
                return
            fifo.popleft()
            merge.taken_off(up, req)
        n = msg.count
        if (
            msg.status is _ERROR
            and req is not None
            and req.state < _ANSWERED
            and req.downstream is not None
            and req.cluster is not None
            and req.cluster.slots is not None
        ):
            hop = req.cluster.slots.redirected(msg.frame, up.pool.endpoint.endpoint.host, req.hop)
            if hop is not None:  # -MOVED or -ASK: the client never sees it
                self._redirect(up, req, hop, now)
                return
        if req is None or req.state >= _ANSWERED:  # late, or its client went away
            if req is not None and req.timer is not None:  # an abandoned request's deadline
                req.timer.cancel()
                req.timer = None
            cluster_counters.response_dropped += n  # late (timed out) or abandoned
            self._after_freed(up, now)
            return
        ok = msg.status is _OK
        if req.parent is None:  # a part's response is counted once, as its parent's answer
            counters = req.listener.counters
            counters.response += n
            if ok:
                counters.response_success += n
            else:
                counters.response_error += n
        if req.endpoint is not None:
            req.endpoint.consecutive_failures = 0
        # The server closes after this response (HTTP "Connection: close").
        closes = msg.properties.get("connection") == "close"
        ds = req.downstream
        if ds is None:  # a mirror copy: nobody waits for it
            self.lifecycle.finish(req, "ok" if ok else "error", None, now)
        elif req.parent is not None:  # a part of a split request: its parent merges it
            self.replies.part_done(req, msg, "ok" if ok else "error", None, now)
        else:
            orig = req.message.request_id
            uid = req.upstream_id
            restore = orig if uid is not None and uid != orig else None
            mutation = req.route.action.response_mutation if req.route is not None else None
            try:
                data: bytes | None = ds.codec.encode(msg, request_id=restore, mutation=mutation)
            except ProtocolError:
                # The codec cannot apply the mutation to this response: forward it as is.
                up.pool.cluster.counters.response_mutation_failed += 1
                data = self._encode_unmutated(ds.codec, msg, restore)
            except Exception:  # a codec bug: counted, and the client still gets an answer
                self.ctx.stats.inc("codec_error")
                data = None
            if data is None:
                detail = f"{ds.codec.name} codec failed to encode the response"
                self.replies.local_reply(req, ErrorType.UNSPECIFIED, detail, now)
            else:
                if req.partial:  # the first answers of a merged message go first
                    data = merge.whole(req, data)
                # The server closing its connection does not close the client's: upstream
                # connections are shared, and the codec keeps the answer consistent with it.
                self.replies.answer(req, data, "ok" if ok else "error", None, now)
        pool = up.pool
        if closes and pool.ordering is not _MULTIPLEXED:
            self._closing(up, now)
        elif pool.retired or pool.waiting:
            self._after_freed(up, now)

    def _redirect(self, up: Upstream, req: ActiveRequest, hop: ClusterHop, now: float) -> None:
        """Send ``req`` again to the node a ``-MOVED`` / ``-ASK`` named (its deadline keeps
        running); after ``MOVED`` the adapter is asked to refetch the slot map."""
        cluster = req.cluster
        assert cluster is not None
        req.hop = hop
        req.upstream = None
        detach_endpoint(req)
        if hop.asking:
            cluster.counters.redis_cluster_ask += 1
        else:
            cluster.counters.redis_cluster_moved += 1
            self.out.append(RefreshSlotMap(cluster.config.name))
        advance(req, RequestState.ROUTED)
        self.sender.send(req, now)
        pool = up.pool
        if pool.retired or pool.waiting:
            self._after_freed(up, now)

    def _encode_unmutated(self, codec: Codec, msg: Message, restore: int | None) -> bytes | None:
        """The response without the mutation its codec refused; None if even that fails."""
        try:
            return codec.encode(msg, request_id=restore)
        except Exception:  # ProtocolError here too: nothing is left to try
            self.ctx.stats.inc("codec_error")
            return None

    def _closing(self, up: Upstream, now: float) -> None:
        """The server announced it closes after this response: requests pipelined behind it
        were never processed, so they go out again on another connection (no retry counted)."""
        unanswered = [req for req in up.fifo if not req.done]
        up.fifo.clear()
        up.merged_extra = 0
        self.pools.close(up, flush=False)
        for req in unanswered:
            req.upstream = None
            if self.merge.answered_in_part(req):  # the rest cannot go out again
                detail = "upstream connection closed"
                self.replies.local_reply(req, ErrorType.UPSTREAM_RESET, detail, now)
                continue
            detach_endpoint(req)
            advance(req, RequestState.ROUTED)
            self.sender.send(req, now)

    def _after_freed(self, up: Upstream, now: float) -> None:
        pool = up.pool
        if pool.retired and up.load == 0 and not up.streams:
            self.pools.close(up, flush=True)
        elif pool.ordering is Ordering.EXCLUSIVE and pool.waiting:
            self.sender.serve_waiting(pool, now)

    def gone(
        self, up: Upstream, error: ErrorType, detail: str, now: float, blame_oldest: bool = True
    ) -> None:
        """The upstream connection failed or closed: answer (or retry) all it carried.
        ``blame_oldest`` False: the request that caused a reset is gone already."""
        self.pools.forget(up)
        victims = [*up.inflight.values(), *up.fifo, *up.streams.values()]
        up.inflight.clear()
        up.fifo.clear()
        up.merged_extra = 0
        up.streams.clear()
        up.queued.clear()
        reason = "connect_failure" if error is ErrorType.CONNECT_FAILURE else "reset"
        if error is ErrorType.BAD_RESPONSE:
            reason = "bad_response"
        live = [req for req in victims if not req.done]
        # A reset (the upstream closed, or answered something unreadable) is the fault of at
        # most one request: on an ordered connection the oldest unanswered one; the others
        # go out again on a fresh connection when that is safe. On a multiplexed one the
        # culprit is unknown: each may go out again once.
        at_fault: ActiveRequest | None = None
        resettable = error is ErrorType.UPSTREAM_RESET or error is ErrorType.BAD_RESPONSE
        ordered = up.pool.ordering is not Ordering.MULTIPLEXED
        if resettable and live and ordered and blame_oldest:
            at_fault = live[0]
        if resettable and live:
            up.pool.cluster.counters.upstream_cx_destroy_with_active_rq += 1
        for req in live:
            if req.done:
                continue
            if resettable and req is not at_fault and self._may_resend(req):
                self._resend(req, now)
            else:
                self.failed(req, error, reason, detail, now)
        pool = up.pool
        if pool.waiting and not pool.connections:
            # Requests waiting for an exclusive connection: reopen for them, or fail them.
            waiting = list(pool.waiting)
            pool.waiting.clear()
            for req in waiting:
                if not req.done:
                    self.failed(req, error, reason, detail, now)

    def failed(
        self, req: ActiveRequest, error: ErrorType, reason: str, detail: str, now: float
    ) -> None:
        """Retry the request on another endpoint when its route allows, else answer it."""
        detach_upstream_tables(req)
        ep = req.endpoint
        if ep is not None and reason != "bad_response":
            self._note_failure(req, ep, now)
        route = req.route
        retries = route.action.retries if route is not None else None
        if (
            retries is not None
            and req.attempts < retries.attempts
            and retries.allows(reason, req.message.properties)
            and req.message.type is not MessageType.ONEWAY
            and req.downstream is not None
            and not self.merge.answered_in_part(req)  # its rest cannot go out again
        ):
            req.attempts += 1
            if ep is not None:
                req.tried = req.tried | {ep.label}
            detach_endpoint(req)
            assert req.cluster is not None
            req.cluster.counters.upstream_rq_retry += 1
            advance(req, RequestState.ROUTED)
            self.sender.send(req, now)
            return
        if req.downstream is None:
            req.listener.counters.mirror_failed += 1
            self.lifecycle.finish(req, "local_error", error, now)
            return
        self.replies.local_reply(req, error, detail, now)

    def _note_failure(self, req: ActiveRequest, ep: EndpointState, now: float) -> None:
        ep.consecutive_failures += 1
        cluster = req.cluster
        od = cluster.config.outlier_detection if cluster is not None else None
        if cluster is None or od is None or ep.consecutive_failures < od.consecutive_failures:
            return
        ejected = sum(1 for e in cluster.endpoints if not e.available(now))
        if (ejected + 1) * 100 > od.max_ejection_percent * len(cluster.endpoints):
            return  # never eject below the configured share of healthy endpoints
        ep.ejection_count += 1
        duration = od.base_ejection_time * ep.ejection_count
        ep.ejected_until = now + duration
        ep.consecutive_failures = 0
        cluster.counters.outlier_ejection += 1
        self.out.append(EndpointEjected(cluster.config.name, ep.label, duration, ep.ejection_count))

    def request_timeout(self, req: ActiveRequest, now: float) -> None:
        req.timer = None
        req.deadline_queue = None
        up = req.upstream
        if up is not None and up.pool.ordering is not Ordering.MULTIPLEXED and req in up.fifo:
            # Without ids the late answer would hold every later answer on this connection
            # back: close it (as Envoy and twemproxy do); what it still carried fails. First,
            # and without this request: a retry of it must not land on the same connection.
            up.fifo.remove(req)
            self.merge.taken_off(up, req)
            detail = "upstream connection closed after a request timed out"
            self._reset(up, detail, now)
        if not req.done:
            if req.cluster is not None:
                req.cluster.counters.upstream_rq_timeout += 1
            self.failed(req, ErrorType.TIMEOUT, "timeout", "request timed out", now)

    def _reset(self, up: Upstream, detail: str, now: float) -> None:
        """Reset ``up`` for a request already taken off it (it timed out)."""
        if not up.closed:
            self.out.append(CloseConnection(up.id, flush=False))
            self.gone(up, ErrorType.UPSTREAM_RESET, detail, now, blame_oldest=False)

    def abandoned_on(self, up: Upstream, req: ActiveRequest, deadline: float | None) -> None:
        """``req``'s client went away while ``up`` (ordered) still owes its answer. If nothing
        else is waiting on ``up``, close it now. If other clients' requests wait behind, and
        each may be resent, reset it and resend them on a fresh connection (the answers ahead
        of theirs, possibly many and large, are for nobody). Else its answer is awaited (and
        dropped) until the request's deadline, when the connection is reset like any timeout."""
        others = [other for other in up.fifo if not other.done]
        if not others or all(self._may_resend(other) for other in others):
            self.pools.close(up, flush=False)
            for other in up.fifo:  # placeholders of this client's earlier requests
                if other.timer is not None:
                    other.timer.cancel()
                    other.timer = None
            up.fifo.clear()
            up.merged_extra = 0
            if others:
                up.pool.cluster.counters.upstream_cx_destroy_with_active_rq += 1
                for other in others:
                    self._resend(other, self.ctx.now)
        elif deadline is not None:
            req.upstream = up
            req.timer = self.ctx.timers.schedule(deadline, self.request_timeout, req)

    def _may_resend(self, req: ActiveRequest) -> bool:
        """Whether ``req`` may go out again on a fresh connection after the one it waited on
        was reset through no fault of its own: once, for a plain two-way request with nothing
        answered yet, when its route's retry policy allows retrying it after a reset (so its
        ``non_idempotent`` rule, if any, does not match it)."""
        if req.resent or req.done or req.downstream is None or self.merge.answered_in_part(req):
            return False
        if req.message.type is not MessageType.REQUEST:
            return False
        route = req.route
        retries = route.action.retries if route is not None else None
        return retries is not None and retries.allows("reset", req.message.properties)

    def _resend(self, req: ActiveRequest, now: float) -> None:
        """Send ``req`` again, on whatever connection its pool gives it now (its deadline
        keeps running; its own retry budget is untouched)."""
        req.resent = True
        detach_upstream_tables(req)
        req.upstream = None
        detach_endpoint(req)
        assert req.cluster is not None
        req.cluster.counters.upstream_rq_resent += 1
        advance(req, RequestState.ROUTED)
        self.sender.send(req, now)

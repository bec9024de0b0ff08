"""The upstream half of the engine: endpoint choice, pools, dispatch, responses, failures
and retries. Mixed into ``Proxy``; see engine.py for the shared state."""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.balancer import EndpointState
from metaprotocol.core.codec import (
    Codec,
    DecodesMany,
    OpensWithPreamble,
    Ordering,
    Side,
    codec_failure,
)
from metaprotocol.core.engine import EngineBase
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    EndpointConnectFailed,
    EndpointEjected,
    OpenUpstream,
    Routed,
    Write,
)
from metaprotocol.core.routing import hash_key
from metaprotocol.core.state import ActiveRequest, ClusterRuntime, ListenerRuntime, Pool, Upstream
from metaprotocol.core.timers import DeadlineQueue
from metaprotocol.core.tracing import TraceSpan, with_traceparent

__all__ = ["ID_SPACE", "SHARE_THRESHOLD", "UpstreamSide"]

# Upstream connections are shared: a new one opens only when every open one carries
# this many requests (and the per-endpoint limit allows).
SHARE_THRESHOLD = 64
# Answers to a merged message are written in one piece, unless they pass this many bytes
# while nothing before them is owed: then what came so far goes out.
PARTIAL_FLUSH: Final = 256 * 1024
ID_SPACE: Final = 2**31 - 1  # request ids we allocate fit every protocol's id field (Thrift: i32)


class UpstreamSide(EngineBase):
    """From a routed request to its upstream connection, and from a response back."""

    _next_conn: int

    def _send(self, req: ActiveRequest, now: float) -> None:
        """Pick an endpoint of ``req.cluster`` and hand the request to its pool."""
        cluster = req.cluster
        route = req.route
        assert cluster is not None and route is not None
        # A merged message counts as the requests it stands for, and fits whole or not at all.
        if (
            cluster.active_requests + req.message.count
            > cluster.config.circuit_breakers.max_requests
        ):
            cluster.counters.upstream_rq_pending_overflow += 1
            self._local_reply(req, ErrorType.OVER_LIMIT, "cluster max_requests reached", now)
            return
        action = route.action
        endpoints = cluster.endpoints
        if len(endpoints) == 1 and not req.tried and endpoints[0].ejected_until <= now:
            endpoint: EndpointState | None = endpoints[0]  # one endpoint: nothing to balance
        else:
            key = hash_key(action, req.message.properties) if action.hash_policy else None
            endpoint = cluster.balancer.pick(now, key, req.tried)
        if endpoint is None:
            self._local_reply(req, ErrorType.NO_HEALTHY_UPSTREAM, "no healthy upstream", now)
            return
        listener = req.listener
        ds = req.downstream
        # A codec may need upstream connections of a kind (Redis: RESP3 after HELLO 3).
        variant: str = ""
        if ds is not None and listener.caps.preamble:
            variant = cast(OpensWithPreamble, ds.codec).variant
        pool_key = listener.config.name if not variant else f"{listener.config.name}/{variant}"
        pool = endpoint.pools.get(pool_key)
        if pool is None:
            pool = self._new_pool(listener, cluster, endpoint, pool_key, variant)
        conns = pool.connections
        if (
            pool.ordering is Ordering.MULTIPLEXED
            and len(conns) == 1
            and conns[0].connected
            and len(conns[0].inflight) < SHARE_THRESHOLD
        ):
            self._dispatch(req, conns[0], now)  # the common case: one warm shared connection
            return
        up = self._acquire(pool, req, now)
        if up is not None:  # None: answered (overflow) or queued for a free connection
            self._dispatch(req, up, now)

    def _new_pool(
        self,
        listener: ListenerRuntime,
        cluster: ClusterRuntime,
        ep: EndpointState,
        key: str,
        variant: str,
    ) -> Pool:
        pool = Pool(listener, cluster, ep, key, variant)
        ep.pools[key] = pool
        self.pools[pool] = None
        return pool

    def _retire_pool(self, pool: Pool) -> None:
        """No new requests go to ``pool``; its connections close once they are idle."""
        pool.retired = True
        if pool.endpoint.pools.get(pool.key) is pool:
            del pool.endpoint.pools[pool.key]
        for up in list(pool.connections):
            if up.load == 0 and not up.queued and not up.streams:
                self._close_upstream(up, flush=True)
        if not pool.connections and not pool.waiting:
            self.pools.pop(pool, None)

    def _acquire(self, pool: Pool, req: ActiveRequest, now: float) -> Upstream | None:
        ds = req.downstream
        if pool.ordering is not Ordering.ORDERED or ds is None:
            return self._choose(pool, req, now)
        # FIFO protocols: one client's requests stay on one upstream connection, or a
        # pipelined SET then GET could run in the other order on two connections.
        up = ds.pinned.get(pool)
        if up is not None and not up.closed:
            return up
        up = self._choose(pool, req, now)
        if up is not None:
            ds.pinned[pool] = up
        return up

    def _choose(self, pool: Pool, req: ActiveRequest, now: float) -> Upstream | None:
        conns = pool.connections
        if len(conns) == 1 and pool.ordering is not Ordering.EXCLUSIVE:
            only = conns[0]
            if only.load < SHARE_THRESHOLD and only.connected and not only.blocked_by:
                return only  # the common case: one shared, connected, lightly loaded connection
        limit = pool.cluster.config.max_connections_per_endpoint
        breakers = pool.cluster.config.circuit_breakers
        can_open = len(conns) < limit and pool.cluster.connections < breakers.max_connections
        if pool.ordering is Ordering.EXCLUSIVE:
            for up in conns:
                if up.load == 0 and not up.queued:
                    return up
            if can_open:
                return self._open(pool, now)
            if len(pool.waiting) >= breakers.max_pending_requests:
                pool.cluster.counters.upstream_rq_pending_overflow += 1
                self._local_reply(req, ErrorType.OVER_LIMIT, "too many pending requests", now)
                return None
            req.pool = pool
            self._claim(req, pool, now)
            advance(req, RequestState.QUEUED)
            pool.waiting.append(req)
            return None
        # The least loaded connection, avoiding those with answers for a client that does not
        # read them (``blocked_by``): on an ordered one a new request would wait behind them.
        best: Upstream | None = None
        for up in conns:
            if best is None or (bool(up.blocked_by), up.load) < (bool(best.blocked_by), best.load):
                best = up
        if best is not None and (
            (best.load < SHARE_THRESHOLD and not best.blocked_by) or not can_open
        ):
            if not best.connected and len(best.queued) >= breakers.max_pending_requests:
                pool.cluster.counters.upstream_rq_pending_overflow += 1
                self._local_reply(req, ErrorType.OVER_LIMIT, "too many pending requests", now)
                return None
            return best
        if not can_open:
            pool.cluster.counters.upstream_cx_overflow += 1
            self._local_reply(req, ErrorType.OVER_LIMIT, "cluster max_connections reached", now)
            return None
        return self._open(pool, now)

    def _open(self, pool: Pool, now: float) -> Upstream:
        conn = self._next_conn
        self._next_conn -= 1
        codec = pool.codec_factory(Side.UPSTREAM, pool.codec_options, pool.max_message_size)
        up = Upstream(conn, pool, codec)
        auth = pool.cluster.config.auth
        # What the connection opens with (a protocol switch, a login); the codec consumes the
        # server's answer, and a refusal is a connect failure (see _upstream_data). The
        # config loader refuses ``auth`` for a codec without the hook.
        if (pool.variant or auth is not None) and pool.caps.preamble:
            up.queued.append(cast(OpensWithPreamble, codec).preamble(pool.variant, auth))
        pool.connections.append(up)
        pool.cluster.connections += 1
        self.upstreams[conn] = up
        pool.cluster.counters.upstream_cx_total += 1
        ep = pool.endpoint.endpoint
        self._out.append(OpenUpstream(conn, ep.host, ep.port, pool.cluster.config.tls))
        deadline = now + pool.cluster.config.connect_timeout
        up.connect_timer = self.timers.schedule(deadline, self._connect_timeout, up)
        return up

    def _connect_failed(self, up: Upstream, detail: str, now: float) -> None:
        """``up`` could not be opened, or its opening (a login) was refused: a connect failure
        (retry and outlier rules apply). ``detail`` goes to the adapter's log only."""
        pool = up.pool
        pool.cluster.counters.upstream_cx_connect_fail += 1
        self._out.append(
            EndpointConnectFailed(pool.cluster.config.name, pool.endpoint.label, detail)
        )
        self._upstream_gone(up, ErrorType.CONNECT_FAILURE, "connect failed", now)

    def _connect_timeout(self, up: Upstream, now: float) -> None:
        up.connect_timer = None
        if not up.closed and not up.connected:
            pool = up.pool
            pool.cluster.counters.upstream_cx_connect_timeout += 1
            self._out.append(
                EndpointConnectFailed(pool.cluster.config.name, pool.endpoint.label, "timed out")
            )
            self._out.append(CloseConnection(up.id, flush=False))
            self._upstream_gone(up, ErrorType.CONNECT_FAILURE, "connect timeout", now)

    def _claim(self, req: ActiveRequest, pool: Pool, now: float) -> None:
        """Count the request against its endpoint and cluster; arm its timeout (once)."""
        if req.endpoint is not None:
            return
        req.endpoint = pool.endpoint
        n = req.message.count
        pool.endpoint.active_requests += n
        assert req.cluster is not None
        req.cluster.active_requests += n
        if req.downstream is not None and self.observe:
            assert req.route is not None
            routed = Routed(
                req.downstream.id, req.route.name, pool.cluster.config.name, pool.endpoint.label
            )
            self._out.append(routed)
        if req.message.type is MessageType.ONEWAY or req.deadline_queue is not None:
            return  # no answer to wait for, or the deadline of an earlier try still runs
        route = req.route
        assert route is not None
        timeout = route.action.timeout or req.listener.config.request_timeout
        if timeout:
            queue = self.deadline_queues.get(timeout)
            if queue is None:
                queue = DeadlineQueue(self.timers, timeout, self._request_timeout)
                self.deadline_queues[timeout] = queue
            queue.add(req, now)
            req.deadline_queue = queue

    def _dispatch(self, req: ActiveRequest, up: Upstream, now: float) -> None:
        """Encode the request for ``up`` and write it (or queue it until connected)."""
        pool = up.pool
        req.pool = pool
        if req.endpoint is None:
            self._claim(req, pool, now)
        msg = req.message
        route = req.route
        assert route is not None
        mutation = route.action.request_mutation
        up_id: int | None = None
        new_id: int | None = None
        oneway = msg.type is MessageType.ONEWAY
        if pool.ordering is Ordering.MULTIPLEXED and not oneway:
            up_id = msg.request_id
            if up_id is None or up_id in up.inflight or up_id in up.streams:
                up_id = self._free_id(up)
                new_id = up_id
        try:
            if req.span is not None and pool.codec_factory.supports_mutation:
                data = self._encode_traced(up.codec, msg, new_id, mutation, req.span)
            else:
                data = up.codec.encode(msg, request_id=new_id, mutation=mutation)
        except ProtocolError as exc:
            self._local_reply(req, exc.error_type, str(exc), now)
            return
        except Exception as bug:  # a codec bug: the request is answered, not lost
            # (its own name: mypyc gives ``exc`` the first clause's type)
            self.stats.inc("codec_error")
            failure = codec_failure(up.codec, "encode", bug)
            self._local_reply(req, failure.error_type, str(failure), now)
            return
        req.upstream = up
        req.upstream_id = up_id
        advance(req, RequestState.SENT)
        if oneway:
            self._finish(req, "oneway", None, now)
        elif up_id is not None:
            if msg.type is MessageType.STREAM_INIT:
                up.streams[up_id] = req
            else:
                up.inflight[up_id] = req
        else:
            up.fifo.append(req)
            if msg.count > 1:
                up.merged_extra += msg.count - 1
        if up.connected:
            self._out.append(Write(up.id, data))
        else:
            up.queued.append(data)
        if up.paused:  # held off for slow readers only: this request's client waits too
            self._resume_upstream(up)
        if up.write_high and req.downstream is not None:
            self._hold_feeder(up, req.downstream)

    def _encode_traced(
        self,
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

    def _free_id(self, up: Upstream) -> int:
        while True:
            candidate = up.next_id
            up.next_id = candidate % ID_SPACE + 1
            if candidate not in up.inflight and candidate not in up.streams:
                return candidate

    def _mirror(self, req: ActiveRequest, cluster_name: str, now: float) -> None:
        cluster = self.runtime.clusters.get(cluster_name)
        if cluster is None or req.route is None:
            req.listener.counters.mirror_failed += 1
            return
        shadow = ActiveRequest(None, req.listener, req.message, now)
        shadow.route = req.route
        shadow.cluster = cluster
        shadow.filter_index = len(req.listener.filters)
        cluster.counters.mirror_sent += 1
        advance(shadow, RequestState.ROUTED)
        self._send(shadow, now)

    def _upstream_stream_frame(self, up: Upstream, msg: Message, now: float) -> None:
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
            self._answer(init, data, "ok", None, now)
        else:
            self._out.append(Write(ds.id, data))

    # -- upstream side -----------------------------------------------------------------------

    def _upstream_connected(self, conn: int, now: float) -> None:
        up = self.upstreams.get(conn)
        if up is None or up.connected:
            return
        up.connected = True
        if up.connect_timer is not None:
            up.connect_timer.cancel()
            up.connect_timer = None
        pool = up.pool
        pool.cluster.counters.upstream_cx_active += 1
        if up.queued:
            self._out.append(Write(conn, b"".join(up.queued)))
            up.queued.clear()
        if pool.ordering is Ordering.EXCLUSIVE:
            self._serve_waiting(pool, now)

    def _serve_waiting(self, pool: Pool, now: float) -> None:
        while pool.waiting:
            free = next((u for u in pool.connections if u.load == 0 and not u.queued), None)
            if free is None:
                return
            req = pool.waiting.popleft()
            if not req.done:
                self._dispatch(req, free, now)

    def _upstream_data(self, up: Upstream, data: bytes, now: float) -> None:
        up.buffer += data
        codec = up.codec
        buffer = up.buffer
        fifo = up.fifo
        while buffer:
            try:
                if fifo and fifo[0].remaining > 1:  # answers to a merged message: merge them
                    msg = cast(DecodesMany, codec).decode_many(buffer, fifo[0].remaining)
                else:
                    msg = codec.decode(buffer)
            except Exception as exc:  # ProtocolError, or a codec bug: the same way out
                if not isinstance(exc, ProtocolError):
                    self.stats.inc("codec_error")
                    exc = codec_failure(codec, "decode", exc)
                elif exc.error_type is ErrorType.CONNECT_FAILURE:
                    # The server refused what the connection opened with (Redis: the login).
                    self._out.append(CloseConnection(up.id, flush=False))
                    self._connect_failed(up, str(exc), now)
                    return
                up.pool.cluster.counters.response_decoding_error += 1
                self._out.append(CloseConnection(up.id, flush=False))
                self._upstream_gone(up, ErrorType.BAD_RESPONSE, str(exc), now)
                return
            if msg is NEED_DATA:
                if len(buffer) > up.pool.max_message_size:
                    up.pool.cluster.counters.response_decoding_error += 1
                    self._out.append(CloseConnection(up.id, flush=False))
                    self._upstream_gone(up, ErrorType.BAD_RESPONSE, "response too large", now)
                return
            self._on_response(up, msg, now)
            if up.closed:
                return

    def _on_response(self, up: Upstream, msg: Message, now: float) -> None:
        mtype = msg.type
        if mtype is MessageType.HEARTBEAT:
            reply = self._heartbeat_reply(up.codec, msg)
            if reply is not None:
                self._out.append(Write(up.id, reply))
            return  # upstream heartbeats never reach clients
        if mtype is MessageType.STREAM_DATA or mtype is MessageType.STREAM_CLOSE:
            self._upstream_stream_frame(up, msg, now)
            return
        if msg.properties.get("push") == "1":
            return  # out-of-band (RESP3 push): not an answer to any request
        cluster_counters = up.pool.cluster.counters
        if up.pool.ordering is Ordering.MULTIPLEXED:
            rid = msg.request_id
            req = up.inflight.pop(rid, None) if rid is not None else None
            if req is None and rid is not None:
                req = up.streams.get(rid)
        else:
            fifo = up.fifo
            if not fifo:
                cluster_counters.response_decoding_error += 1
                self._out.append(CloseConnection(up.id, flush=False))
                self._upstream_gone(up, ErrorType.BAD_RESPONSE, "unsolicited response", now)
                return
            req = fifo[0]
            if req.remaining > msg.count:  # a merged message still waits for more answers
                self._partial_response(up, req, msg)
                return
            fifo.popleft()
            if req.message.count > 1:
                up.merged_extra -= req.message.count - 1
        n = msg.count
        if req is None or req.done:
            if req is not None and req.timer is not None:  # an abandoned request's deadline
                req.timer.cancel()
                req.timer = None
            cluster_counters.response_dropped += n  # late (timed out) or abandoned
            self._after_upstream_freed(up, now)
            return
        counters = req.listener.counters
        counters.response += n
        ok = msg.status is ResponseStatus.OK
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
            self._finish(req, "ok" if ok else "error", None, now)
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
                self.stats.inc("codec_error")
                data = None
            if data is None:
                detail = f"{ds.codec.name} codec failed to encode the response"
                self._local_reply(req, ErrorType.UNSPECIFIED, detail, now)
            else:
                partial = req.partial
                if partial:
                    ds.held -= sum(len(part) for part in partial)
                    data = b"".join((*partial, data))
                # The server closing its connection does not close the client's: upstream
                # connections are shared, and the codec keeps the answer consistent with it.
                self._answer(req, data, "ok" if ok else "error", None, now)
        pool = up.pool
        if closes and pool.ordering is not Ordering.MULTIPLEXED:
            self._upstream_closing(up, now)
        elif pool.retired or pool.waiting:
            self._after_upstream_freed(up, now)

    def _encode_unmutated(self, codec: Codec, msg: Message, restore: int | None) -> bytes | None:
        """The response without the mutation its codec refused; None if even that fails."""
        try:
            return codec.encode(msg, request_id=restore)
        except Exception:  # ProtocolError here too: nothing is left to try
            self.stats.inc("codec_error")
            return None

    def _partial_response(self, up: Upstream, req: ActiveRequest, msg: Message) -> None:
        """Some of the answers a merged message waits for: kept until the last one."""
        n = msg.count
        req.remaining -= n
        if req.done:
            up.pool.cluster.counters.response_dropped += n
            return
        counters = req.listener.counters
        counters.response += n
        if msg.status is ResponseStatus.OK:
            counters.response_success += n
        else:
            counters.response_error += n
        ds = req.downstream
        if ds is None:
            return
        data = ds.codec.encode(msg)  # merged messages are never mutated
        partial = req.partial
        if partial is None:
            partial = req.partial = []  # not None, even once emptied: it is partly answered
        partial.append(data)
        ds.held += len(data)
        slots = ds.slots
        if ds.held > PARTIAL_FLUSH and (req.slot is None or (slots and slots[0] is req.slot)):
            # Nothing before it is still owed: the client gets these parts now, rather than
            # the proxy holding up to max_pending_requests answers for it.
            ds.held -= sum(len(part) for part in partial)
            self._out.append(Write(ds.id, b"".join(partial)))
            partial.clear()
        else:
            self._held_too_much(ds)

    def _upstream_closing(self, up: Upstream, now: float) -> None:
        """The server announced it closes after this response: requests pipelined behind it
        were never processed, so they go out again on another connection (no retry counted)."""
        unanswered = [req for req in up.fifo if not req.done]
        up.fifo.clear()
        up.merged_extra = 0
        self._close_upstream(up, flush=False)
        for req in unanswered:
            req.upstream = None
            if req.partial is not None:  # partly answered: the rest cannot go out again
                detail = "upstream connection closed"
                self._local_reply(req, ErrorType.UPSTREAM_RESET, detail, now)
                continue
            self._unclaim(req)
            advance(req, RequestState.ROUTED)
            self._send(req, now)

    def _after_upstream_freed(self, up: Upstream, now: float) -> None:
        pool = up.pool
        if pool.retired and up.load == 0 and not up.streams:
            self._close_upstream(up, flush=True)
        elif pool.ordering is Ordering.EXCLUSIVE and pool.waiting:
            self._serve_waiting(pool, now)

    def _upstream_gone(
        self, up: Upstream, error: ErrorType, detail: str, now: float, blame_oldest: bool = True
    ) -> None:
        """The upstream connection failed or closed: answer (or retry) all it carried.
        ``blame_oldest`` False: the request that caused a reset is gone already."""
        self._forget_upstream(up)
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
                self._upstream_failed(req, error, reason, detail, now)
        pool = up.pool
        if pool.waiting and not pool.connections:
            # Requests waiting for an exclusive connection: reopen for them, or fail them.
            waiting = list(pool.waiting)
            pool.waiting.clear()
            for req in waiting:
                if not req.done:
                    self._upstream_failed(req, error, reason, detail, now)

    def _forget_upstream(self, up: Upstream) -> None:
        if up.closed:
            return
        up.closed = True
        del self.upstreams[up.id]
        pool = up.pool
        if up in pool.connections:
            pool.connections.remove(up)
            pool.cluster.connections -= 1
        if up.connect_timer is not None:
            up.connect_timer.cancel()
        if up.connected:
            pool.cluster.counters.upstream_cx_active -= 1
        self._release_feeders(up)
        for ds in up.blocked_by:
            ds.blocking.pop(up, None)
        up.blocked_by.clear()
        if pool.retired and not pool.connections and not pool.waiting:
            self.pools.pop(pool, None)

    def _close_upstream(self, up: Upstream, flush: bool) -> None:
        if not up.closed:
            self._out.append(CloseConnection(up.id, flush=flush))
            self._forget_upstream(up)

    def _upstream_failed(
        self, req: ActiveRequest, error: ErrorType, reason: str, detail: str, now: float
    ) -> None:
        """Retry the request on another endpoint when its route allows, else answer it."""
        self._release_upstream(req)
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
            and req.partial is None  # a partly answered merged message is not sent again
        ):
            req.attempts += 1
            if ep is not None:
                req.tried = req.tried | {ep.label}
            self._unclaim(req)
            assert req.cluster is not None
            req.cluster.counters.upstream_rq_retry += 1
            advance(req, RequestState.ROUTED)
            self._send(req, now)
            return
        if req.downstream is None:
            req.listener.counters.mirror_failed += 1
            self._finish(req, "local_error", error, now)
            return
        self._local_reply(req, error, detail, now)

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
        self._out.append(
            EndpointEjected(cluster.config.name, ep.label, duration, ep.ejection_count)
        )

    def _request_timeout(self, req: ActiveRequest, now: float) -> None:
        req.timer = None
        req.deadline_queue = None
        up = req.upstream
        if up is not None and up.pool.ordering is not Ordering.MULTIPLEXED and req in up.fifo:
            # Without ids the late answer would hold every later answer on this connection
            # back: close it (as Envoy and twemproxy do); what it still carried fails. First,
            # and without this request: a retry of it must not land on the same connection.
            up.fifo.remove(req)
            up.merged_extra -= req.message.count - 1
            detail = "upstream connection closed after a request timed out"
            self._reset_upstream(up, detail, now)
        if not req.done:
            if req.cluster is not None:
                req.cluster.counters.upstream_rq_timeout += 1
            self._upstream_failed(req, ErrorType.TIMEOUT, "timeout", "request timed out", now)

    def _reset_upstream(self, up: Upstream, detail: str, now: float) -> None:
        """Reset ``up`` for a request already taken off it (it timed out)."""
        if not up.closed:
            self._out.append(CloseConnection(up.id, flush=False))
            self._upstream_gone(up, ErrorType.UPSTREAM_RESET, detail, now, blame_oldest=False)

    def _abandoned_on(self, up: Upstream, req: ActiveRequest, deadline: float | None) -> None:
        """``req``'s client went away while ``up`` (ordered) still owes its answer. If nothing
        else is waiting on ``up``, close it now. If other clients' requests wait behind, and
        each may be resent, reset it and resend them on a fresh connection (the answers ahead
        of theirs, possibly many and large, are for nobody). Else its answer is awaited (and
        dropped) until the request's deadline, when the connection is reset like any timeout."""
        others = [other for other in up.fifo if not other.done]
        if not others or all(self._may_resend(other) for other in others):
            self._close_upstream(up, flush=False)
            for other in up.fifo:  # placeholders of this client's earlier requests
                if other.timer is not None:
                    other.timer.cancel()
                    other.timer = None
            up.fifo.clear()
            up.merged_extra = 0
            if others:
                up.pool.cluster.counters.upstream_cx_destroy_with_active_rq += 1
                for other in others:
                    self._resend(other, self.now)
        elif deadline is not None:
            req.upstream = up
            req.timer = self.timers.schedule(deadline, self._request_timeout, req)

    def _may_resend(self, req: ActiveRequest) -> bool:
        """Whether ``req`` may go out again on a fresh connection after the one it waited on
        was reset through no fault of its own: once, for a plain two-way request with nothing
        answered yet, when its route's retry policy allows retrying it after a reset (so its
        ``non_idempotent`` rule, if any, does not match it)."""
        if req.resent or req.done or req.downstream is None or req.partial is not None:
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
        self._release_upstream(req)
        req.upstream = None
        self._unclaim(req)
        assert req.cluster is not None
        req.cluster.counters.upstream_rq_resent += 1
        advance(req, RequestState.ROUTED)
        self._send(req, now)

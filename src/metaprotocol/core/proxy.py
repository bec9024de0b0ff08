"""The sans-IO proxy engine: events in, instructions and observer events out.

One ``Proxy`` per event loop holds every downstream and upstream connection, the
route table, the clusters, the upstream pools and the filter state. The adapter
calls ``handle(event, now)`` and executes the returned instructions in order, and
arms one timer for ``next_deadline()`` (the contract: docs/architecture.md).

Rules the engine keeps:
- every decoded request gets exactly one answer: its response, or a local error reply
  built by the codec (oneway requests and mirror copies get none by design);
- every table entry made for a request or connection is removed when it ends;
- nothing a peer sends makes ``handle`` raise: protocol errors become error replies
  and/or closes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, cast

from metaprotocol.core import events as ev
from metaprotocol.core.codec import (
    CodecFactory,
    DecodesAtEof,
    DecodesMany,
    SendsInterimReply,
    Side,
    codec_failure,
)
from metaprotocol.core.config import Config, TracingConfig
from metaprotocol.core.filters import CONTINUE, Abort, Call, Delay
from metaprotocol.core.flow import Reason
from metaprotocol.core.lifecycle import PendingCall, RequestState, advance
from metaprotocol.core.message import (
    NEED_DATA,
    AuthenticationFailed,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    Decoded,
    ExternalCall,
    FilterFailed,
    LocalReplied,
    NoRouteMatched,
    Output,
    RequestCompleted,
    Write,
)
from metaprotocol.core.routing import MergeRun, match_route, pick_cluster
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.state import (
    ActiveRequest,
    Downstream,
    ListenerRuntime,
    Pool,
    ReplySlot,
    Upstream,
)
from metaprotocol.core.stats import EndpointStatus, Stats
from metaprotocol.core.timers import DeadlineQueue, Timers
from metaprotocol.core.tracing import start_span
from metaprotocol.core.upstream_side import UpstreamSide

__all__ = ["Proxy"]

_REQUEST: Final = MessageType.REQUEST
_ONEWAY: Final = MessageType.ONEWAY
_STREAM_INIT: Final = MessageType.STREAM_INIT


class Proxy(UpstreamSide):
    """The engine. See the module docstring for the contract."""

    def __init__(
        self,
        config: Config,
        *,
        now: float,
        codecs: Mapping[str, CodecFactory] | None = None,
        random: Callable[[], float] | None = None,
        observe: bool = True,
    ) -> None:
        self.stats = Stats()
        self._codecs = dict(codecs or {})
        self.random: Callable[[], float] = random if random is not None else _no_random
        self.observe = observe
        self.timers = Timers()
        self.deadline_queues: dict[float, DeadlineQueue] = {}
        self.downstreams: dict[int, Downstream] = {}
        self.upstreams: dict[int, Upstream] = {}
        self.pools: dict[Pool, None] = {}  # every pool with connections (an ordered set)
        self.calls: dict[int, PendingCall] = {}  # external call id -> paused request
        self.draining = False
        self._next_conn = -1  # upstream ids are negative so they never collide with the adapter's
        self._next_call = 1
        self._out: list[Output] = []
        self.now = now
        self._merge = MergeRun()  # what a codec's decode_many asks before merging a request
        self.runtime = Runtime(config, self.stats, self.random, self.codec_factory, now)
        self.tracing: TracingConfig | None = config.tracing

    # -- public API ------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.runtime.config

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        """Health and load of every upstream endpoint (the admin's ``/clusters``)."""
        return self.runtime.endpoint_statuses(now)

    def codec_factory(self, name: str) -> CodecFactory:
        factory = self._codecs.get(name)
        if factory is None:
            from metaprotocol.codecs.registry import get_codec

            factory = self._codecs[name] = get_codec(name)
        return factory

    def handle(self, event: ev.Event, now: float) -> list[Output]:
        out: list[Output] = []
        self._out = out
        self.now = now
        if isinstance(event, ev.DataReceived):  # the hot path, ahead of the general dispatch
            ds = self.downstreams.get(event.conn)
            if ds is not None:
                ds.last_activity = now
                if not ds.closing:  # closing: a fatal error or drain, only flushing is left
                    ds.buffer += event.data
                    self._decode_downstream(ds, now)
            else:
                up = self.upstreams.get(event.conn)
                if up is not None:
                    self._upstream_data(up, event.data, now)
            heap = self.timers.heap
            if heap and heap[0][0] <= now:
                self.timers.fire_due(now)
            self._out = []
            return out
        match event:
            case ev.Accepted(conn, listener, peer):
                self._accepted(conn, listener, peer, now)
            case ev.UpstreamConnected(conn):
                self._upstream_connected(conn, now)
            case ev.UpstreamConnectFailed(conn, error):
                up = self.upstreams.get(conn)
                if up is not None:
                    # The adapter's error names the address: it goes to the log (the
                    # event), the clients' replies only say what kind of failure it was.
                    self._connect_failed(up, error or "refused", now)
            case ev.EofReceived(conn) | ev.Closed(conn):
                self._conn_ended(conn, isinstance(event, ev.EofReceived), now)
            case ev.WriteBufferHigh(conn):
                self._write_buffer_high(conn)
            case ev.WriteBufferGrew(conn, size):
                self._write_buffer_grew(conn, size)
            case ev.WriteBufferLow(conn):
                self._write_buffer_low(conn, now)
            case ev.ExternalCallCompleted(call, result, error):
                self._call_completed(call, result, error, now)
            case ev.TimePassed():
                pass
        self.timers.fire_due(now)
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def reload(self, config: Config, now: float) -> list[Output]:
        """Swap routes, clusters and filters atomically. In-flight requests finish on the
        objects they started with; pools of endpoints no longer configured are retired. The
        connections of a listener no longer configured drain: their in-flight requests are
        answered, nothing more is read, then they close."""
        out: list[Output] = []
        self._out = out
        self.now = now
        new = Runtime(config, self.stats, self.random, self.codec_factory, now)
        old = self.runtime
        self.runtime = new
        self.tracing = config.tracing
        for ds in list(self.downstreams.values()):
            listener = new.listeners.get(ds.listener.config.name)
            if listener is None:  # the listener is gone: its connections drain, as on SIGTERM
                ds.closing = True
                self._maybe_finish_close(ds)
            elif listener.codec_factory is ds.listener.codec_factory:
                ds.listener = listener
        self._carry_pools_over(old, new)
        self.stats.inc("config_reload")
        self._out = []
        return out

    def _carry_pools_over(self, old: Runtime, new: Runtime) -> None:
        """Endpoints that stay keep their pools (and warm connections) and their outlier
        state; the pools of endpoints or listeners that went away are retired."""
        kept: set[Pool] = set()
        for name, cluster in new.clusters.items():
            previous = old.clusters.get(name)
            if previous is None or previous.config.tls != cluster.config.tls:
                continue  # new, or its connections must be opened with other TLS settings
            before = {ep.label: ep for ep in previous.endpoints}
            for ep in cluster.endpoints:
                prior = before.get(ep.label)
                if prior is None:
                    continue
                ep.consecutive_failures = prior.consecutive_failures
                ep.ejected_until = prior.ejected_until
                ep.ejection_count = prior.ejection_count
                for key, pool in prior.pools.items():
                    listener = new.listeners.get(pool.listener_name)
                    if listener is None or listener.codec_factory is not pool.codec_factory:
                        continue
                    pool.cluster = cluster
                    pool.endpoint = ep
                    cluster.connections += len(pool.connections)
                    ep.pools[key] = pool
                    kept.add(pool)
        for pool in list(self.pools):
            if pool not in kept:
                self._retire_pool(pool)

    def drain(self, now: float) -> list[Output]:
        """Stop taking new connections; close each downstream once its replies are written."""
        out: list[Output] = []
        self._out = out
        self.now = now
        self.draining = True
        for ds in list(self.downstreams.values()):
            ds.closing = True
            self._maybe_finish_close(ds)
        self._out = []
        return out

    @property
    def drained(self) -> bool:
        return not self.downstreams

    def live_timers(self) -> int:
        """Armed timers that still stand for something (idle deadline watchers do not)."""
        idle = sum(1 for queue in self.deadline_queues.values() if queue.idle_check)
        return len(self.timers) - idle

    def connection_count(self) -> int:
        return len(self.downstreams) + len(self.upstreams)

    def request_count(self) -> int:
        n = sum(len(ds.active) for ds in self.downstreams.values())
        n += sum(up.load + len(up.streams) for up in self.upstreams.values())
        return n + len(self.calls) + sum(len(p.waiting) for p in self.pools)

    # -- downstream side ---------------------------------------------------------------------

    def _accepted(self, conn: int, listener_name: str, peer: str, now: float) -> None:
        listener = self.runtime.listeners.get(listener_name)
        if listener is None or self.draining:
            self._out.append(CloseConnection(conn, flush=False))
            return
        lc = listener.config
        codec = listener.codec_factory(Side.DOWNSTREAM, lc.codec_options, lc.max_message_size)
        ds = Downstream(conn, listener, codec, now, peer)
        self.downstreams[conn] = ds
        listener.counters.downstream_cx_total += 1
        listener.counters.downstream_cx_active += 1
        if lc.idle_timeout:
            ds.idle_timer = self.timers.schedule(now + lc.idle_timeout, self._idle_check, ds)

    def _idle_check(self, ds: Downstream, now: float) -> None:
        if ds.closed:
            return
        timeout = ds.listener.config.idle_timeout or 0.0
        due = ds.last_activity + timeout
        if ds.active:
            ds.idle_timer = self.timers.schedule(now + timeout, self._idle_check, ds)
        elif due > now:
            ds.idle_timer = self.timers.schedule(due, self._idle_check, ds)
        else:
            ds.listener.counters.idle_timeout += 1
            self._close_downstream(ds, flush=True)

    def _decode_downstream(self, ds: Downstream, now: float) -> None:
        codec = ds.codec
        buffer = ds.buffer
        listener = ds.listener
        lc = listener.config
        # Pipelined requests taking the same route may be merged into one message (fewer
        # objects, one upstream write); not while observers want to see each request.
        many = None
        observe = self.observe
        before = 0  # the buffer's size before a decode (observed only: for the access log)
        if listener.batchable and not observe:
            many = cast(DecodesMany, codec).decode_many
            # a new pass: same_route questions are about this listener
            merge = self._merge
            merge.routes = listener.routes
            merge.clusters = self.runtime.clusters
            merge.first = None
        gate = ds.gate
        while buffer and not ds.closing:
            if gate.reasons and Reason.OWN_WRITE_BUFFER_HIGH in gate.reasons:
                return  # it does not read its replies: no new requests until it does
            room = lc.max_pending_requests - ds.pending
            if room <= 0:
                self._disable(ds, Reason.TOO_MANY_PENDING)
                return
            if observe:
                before = len(buffer)
            try:
                msg = codec.decode(buffer) if many is None else many(buffer, room, self._merge)
            except ProtocolError as exc:
                self._decode_failed(ds, exc, now, before)
                continue
            except Exception as bug:  # a codec bug: answered and closed, never stuck
                # (its own name: mypyc gives ``exc`` the first clause's type)
                self.stats.inc("codec_error")
                failure = codec_failure(codec, "decode", bug)
                self._decode_failed(ds, failure, now, before)
                continue
            if msg is NEED_DATA:
                if listener.caps.interim_reply:
                    try:
                        early = cast(SendsInterimReply, codec).interim_reply()
                    except Exception:  # a codec bug: the early reply is optional anyway
                        self.stats.inc("codec_error")
                        early = None
                    if early:
                        self._out.append(Write(ds.id, early))
                if len(buffer) > lc.max_message_size:
                    too_large = ProtocolError("message too large", ErrorType.MESSAGE_TOO_LARGE)
                    self._decode_failed(ds, too_large, now, len(buffer))
                return
            self._on_request(ds, msg, now)

    def _decode_failed(
        self, ds: Downstream, exc: ProtocolError, now: float, before: int = 0
    ) -> None:
        """Answer what the codec refused or could not read. ``before``: the receive buffer's
        size before the failed decode (what the codec consumed of it is the request's size;
        a fatal error discards all of it)."""
        ds.listener.counters.request_decoding_error += 1
        if isinstance(exc, AuthenticationFailed):
            ds.listener.counters.downstream_auth_failed += 1
        reply = self._error_reply(ds.codec, exc.request, exc.error_type, str(exc))
        fatal = exc.fatal or reply is None
        received = before if fatal else max(before - len(ds.buffer), 0)
        if fatal:
            ds.buffer.clear()
            ds.closing = True  # nothing more is read; close once the replies are written
        if reply is not None:
            ds.listener.counters.local_response_error += 1
            if self.observe:
                self._out.append(LocalReplied(ds.id, exc.error_type, str(exc)))
                self._out.append(self._refused(ds, exc.error_type, reply, now, received))
            if ds.listener.ordered:
                slot = ReplySlot()
                slot.data = reply
                slot.close_after = fatal
                ds.held += len(reply)
                ds.add_slot(slot)
                self._flush_slots(ds)
            else:
                self._out.append(Write(ds.id, reply))
        if fatal:
            self._maybe_finish_close(ds)
            if not ds.closed:  # earlier answers are still on their way
                self._disable(ds, Reason.CLOSING)

    def _refused(
        self, ds: Downstream, error: ErrorType, reply: bytes, now: float, received: int
    ) -> RequestCompleted:
        """The access log's line for a request answered before it became one (the codec
        refused or could not decode it): no route, no upstream, no time spent."""
        return RequestCompleted(
            ds.id,
            ds.listener.config.name,
            "",
            "",
            "",
            "local_error",
            error,
            0.0,
            {},
            ds.peer,
            ds.codec.name,
            self._wire_status(ds, reply),
            received,
            len(reply),
        )

    def _on_request(self, ds: Downstream, msg: Message, now: float) -> None:
        mtype = msg.type
        listener = ds.listener
        if mtype is _REQUEST or mtype is _ONEWAY or mtype is _STREAM_INIT:
            self._new_request(ds, listener, msg, mtype, now)
            return
        counters = listener.counters
        if mtype is MessageType.HEARTBEAT:
            counters.heartbeat += 1
            reply = self._heartbeat_reply(ds.codec, msg)
            if reply is None:
                return
            if listener.ordered:  # behind the answers to earlier requests
                slot = ReplySlot()
                slot.data = reply
                ds.held += len(reply)
                ds.add_slot(slot)
                self._flush_slots(ds)
            else:
                self._out.append(Write(ds.id, reply))
            return
        if mtype is MessageType.STREAM_DATA or mtype is MessageType.STREAM_CLOSE:
            self._stream_frame(ds, msg, now)
            return
        self._decode_failed(ds, ProtocolError(f"unexpected {mtype.value} from client"), now)

    def _new_request(
        self,
        ds: Downstream,
        listener: ListenerRuntime,
        msg: Message,
        mtype: MessageType,
        now: float,
    ) -> None:
        counters = listener.counters
        n = msg.count
        counters.request += n
        counters.request_decoding_success += n
        if n > 1:
            counters.request_merged += n
        if self.observe:
            self._out.append(Decoded(ds.id, msg.request_id, mtype.value, msg.properties))
        req = ActiveRequest(ds, listener, msg, now)
        tracing = self.tracing
        if tracing is not None:
            req.span = start_span(msg.properties, tracing.sampling, self.random)
        if mtype is _ONEWAY:
            counters.request_oneway += n
        else:
            counters.request_twoway += n
            ds.active[req] = None
            ds.pending += n
            counters.active_requests += n
            if listener.ordered:
                req.slot = ReplySlot()
                ds.add_slot(req.slot)
            if mtype is _STREAM_INIT and msg.request_id is not None:
                ds.streams[msg.request_id] = req
        if listener.filters:
            advance(req, RequestState.FILTERING)
            self._run_filters(req, now)
        else:
            self._route(req, now)

    # -- filters -----------------------------------------------------------------------------

    def _run_filters(self, req: ActiveRequest, now: float) -> None:
        filters = req.listener.filters
        while req.filter_index < len(filters):
            current = filters[req.filter_index]
            try:
                result = current.on_request(req.message.properties, now)
            except Exception as exc:  # a filter bug: the request is answered, never stuck
                self._filter_failed(req, _filter_name(current), exc, now)
                return
            req.filter_index += 1
            if result is CONTINUE:
                continue
            if isinstance(result, Abort):
                self._local_reply(req, result.error, result.detail, now)
                return
            if isinstance(result, Delay):
                req.pause_timer = self.timers.schedule(now + result.seconds, self._resume, req)
                return
            assert isinstance(result, Call)
            self._external_call(req, result, now)
            return
        self._route(req, now)

    def _resume(self, req: ActiveRequest, now: float) -> None:
        req.pause_timer = None
        if not req.done:
            self._run_filters(req, now)

    def _external_call(self, req: ActiveRequest, call: Call, now: float) -> None:
        call_id = self._next_call
        self._next_call += 1
        req.call = call_id
        self.calls[call_id] = PendingCall(req, call.decide)
        req.pause_timer = self.timers.schedule(now + call.timeout, self._call_expired, req)
        self._out.append(ExternalCall(call_id, call.kind, call.payload))

    def _call_expired(self, req: ActiveRequest, now: float) -> None:
        req.pause_timer = None
        call_id = req.call
        if call_id is not None:
            self._call_completed(call_id, None, "timeout", now)

    def _call_completed(self, call_id: int, result: object, error: str, now: float) -> None:
        pending = self.calls.pop(call_id, None)
        if pending is None:
            return  # timed out already, or the client went away
        req = pending.request
        req.call = None
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        try:
            verdict = pending.decide(result, error)
        except Exception as exc:  # the filter's decision raised: as if the filter had
            name = _filter_name(req.listener.filters[req.filter_index - 1])
            self._filter_failed(req, name, exc, now)
            return
        self._decided(req, verdict, now)

    def _filter_failed(self, req: ActiveRequest, name: str, exc: Exception, now: float) -> None:
        """Answer the request with an internal error, count it, and tell the adapter (which
        logs it once) which filter raised what, on which route; never the request itself."""
        listener = req.listener
        listener.counters.filter_error += 1
        route = match_route(listener.routes, req.message.properties)
        ds = req.downstream
        conn = ds.id if ds is not None else 0
        route_name = route.name if route is not None else ""
        self._out.append(FilterFailed(conn, listener.config.name, name, route_name, exc))
        self._local_reply(req, ErrorType.UNSPECIFIED, "internal error", now)

    def _decided(self, req: ActiveRequest, verdict: Abort | None, now: float) -> None:
        if req.done:
            return
        if verdict is not None:
            self._local_reply(req, verdict.error, verdict.detail, now)
        else:
            self._run_filters(req, now)

    # -- routing -----------------------------------------------------------------------------

    def _route(self, req: ActiveRequest, now: float) -> None:
        route = match_route(req.listener.routes, req.message.properties)
        if route is None:
            req.listener.counters.route_not_found += 1
            if self.observe and req.downstream is not None:
                self._out.append(NoRouteMatched(req.downstream.id))
            self._local_reply(req, ErrorType.ROUTE_NOT_FOUND, "no route matched", now)
            return
        req.route = route
        action = route.action
        name = action.cluster if action.cluster is not None else pick_cluster(action, self.random)
        cluster = self.runtime.clusters.get(name) if name is not None else None
        if cluster is None:
            self._local_reply(req, ErrorType.CLUSTER_NOT_FOUND, f"cluster {name!r} not found", now)
            return
        req.cluster = cluster
        advance(req, RequestState.ROUTED)
        req.listener.route_counters[route.name].route_hit += req.message.count
        if action.mirror:
            for mirror in action.mirror:
                if mirror.fraction >= 1.0 or self.random() < mirror.fraction:
                    self._mirror(req, mirror.cluster, now)
        self._send(req, now)

    # -- streams -----------------------------------------------------------------------------

    def _stream_frame(self, ds: Downstream, msg: Message, now: float) -> None:
        """Data / close frames follow their stream's init frame to the same upstream."""
        sid = msg.request_id
        init = ds.streams.get(sid) if sid is not None else None
        if init is None or init.upstream is None or init.upstream_id is None:
            if msg.type is MessageType.STREAM_CLOSE:
                return  # the stream already ended (the server closed it first): nothing to do
            self._decode_failed(ds, ProtocolError("frame for unknown stream", fatal=False), now)
            return
        up = init.upstream
        new_id = init.upstream_id if init.upstream_id != sid else None
        data = up.codec.encode(msg, request_id=new_id)
        if up.connected:
            self._out.append(Write(up.id, data))
        else:
            up.queued.append(data)
        if msg.type is MessageType.STREAM_CLOSE and msg.status is ResponseStatus.ERROR:
            # A reset from the client ends the stream both ways: the server answers nothing
            # more for it, so its state goes now rather than at the request timeout.
            self._finish(init, "reset", None, now)

    # -- connection lifecycle ----------------------------------------------------------------

    def _conn_ended(self, conn: int, eof: bool, now: float) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            # End of stream from a client means it is gone (as nginx assumes by default):
            # what it still waits for is abandoned, and nothing is kept for it upstream.
            if ds.active:
                ds.listener.counters.cx_destroy_remote_with_active_rq += 1
            self._drop_downstream(ds, now)
            if eof:
                self._out.append(CloseConnection(conn, flush=True))
            return
        up = self.upstreams.get(conn)
        if up is not None:
            # A response framed by the connection closing (HTTP/1.0 style) ends here.
            if up.pool.caps.decode_eof and up.buffer:
                try:
                    last = cast(DecodesAtEof, up.codec).decode_eof(up.buffer)
                except Exception as exc:  # the response is incomplete (or the codec buggy)
                    if not isinstance(exc, ProtocolError):
                        self.stats.inc("codec_error")
                    last = None
                if last is not None:
                    self._on_response(up, last, now)
            if up.closed:
                return
            if eof:
                self._out.append(CloseConnection(conn, flush=False))
            self._upstream_gone(up, ErrorType.UPSTREAM_RESET, "upstream connection closed", now)

    def _write_buffer_high(self, conn: int) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            # A client that does not read its replies: stop decoding its requests. The
            # upstreams that owe it answers stop being read only if it is all they serve;
            # a shared one goes on, and this client's answers wait in its own output buffer
            # (up to output_buffer_limit) instead of stalling the others.
            self._disable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
            for req in ds.active:
                held = req.upstream
                if held is None or ds in held.blocked_by:
                    continue
                held.blocked_by[ds] = None
                ds.blocking[held] = None
                self._pause_if_only_slow(held)
            return
        up = self.upstreams.get(conn)
        if up is None or up.write_high:
            return
        up.write_high = True
        for req in (*up.inflight.values(), *up.fifo):
            ds = req.downstream
            if ds is not None and not req.done and not ds.closed:
                self._hold_feeder(up, ds)

    def _write_buffer_grew(self, conn: int, size: int) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None and size > ds.listener.config.output_buffer_limit:
            # Like Redis's client-output-buffer-limit: a client this far behind is closed
            # rather than let its unread replies grow without bound.
            ds.listener.counters.downstream_cx_output_overflow += 1
            self._close_downstream(ds, flush=False)

    def _write_buffer_low(self, conn: int, now: float) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            self._enable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
            self._unblock_upstreams(ds)
            if ds.buffer and not ds.closing:  # requests that arrived before it filled up
                self._decode_downstream(ds, now)
            return
        up = self.upstreams.get(conn)
        if up is None or not up.write_high:
            return
        up.write_high = False
        self._release_feeders(up)


def _filter_name(current: object) -> str:
    """A filter's ``name``, read from its class the Python way: a third-party subclass sets
    it as a class attribute, which the compiled build would not see through the base class
    (only called when a filter failed, never per request)."""
    return str(getattr(type(current), "name", type(current).__name__))


def _no_random() -> float:
    """The default randomness: none. Weighted picks and fractions then take the first
    choice; pass ``random=`` (e.g. ``random.Random(seed).random``) for real spreading."""
    return 0.0

"""The sans-IO proxy engine: events in, instructions and observer events out.

One ``Proxy`` per event loop holds every downstream and upstream connection, the
route table, the clusters, the upstream pools and the filter state. The adapter
calls ``handle(event, now)`` and executes the returned instructions in order, and
arms one timer for ``next_deadline()``.

Rules the engine keeps:
- every decoded request gets exactly one answer: its response, or a local error reply
  built by the codec (oneway requests and mirror copies get none by design);
- every table entry made for a request or connection is removed when it ends;
- nothing a peer sends makes ``handle`` raise: protocol errors become error replies
  and/or closes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from metaprotocol.core import events as ev
from metaprotocol.core.balancer import EndpointState, make_balancer
from metaprotocol.core.codec import CodecFactory, Ordering, Side
from metaprotocol.core.config import ClusterConfig, Config
from metaprotocol.core.filters import CONTINUE, Abort, Call, Delay, build_filters
from metaprotocol.core.flow import Reason
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
    Decoded,
    ExternalCall,
    LocalReplied,
    NoRouteMatched,
    OpenUpstream,
    Output,
    ReadDisable,
    ReadEnable,
    RequestCompleted,
    Routed,
    Write,
)
from metaprotocol.core.routing import hash_key, match_route, pick_cluster
from metaprotocol.core.state import (
    ActiveRequest,
    ClusterRuntime,
    Downstream,
    ListenerRuntime,
    Pool,
    ReplySlot,
    Upstream,
)
from metaprotocol.core.stats import Stats
from metaprotocol.core.timers import Timers

__all__ = ["Proxy"]

# Upstream connections are shared: a new one opens only when every open one carries
# this many requests (and the per-endpoint limit allows).
SHARE_THRESHOLD = 64
ID_SPACE = 2**31 - 1  # request ids we allocate fit every protocol's id field (Thrift: i32)
_STREAM_TYPES = (MessageType.STREAM_DATA, MessageType.STREAM_CLOSE)


class _Runtime:
    """Everything derived from one Config; swapped atomically on reload."""

    def __init__(self, config: Config, proxy: Proxy, now: float) -> None:
        self.config = config
        self.listeners: dict[str, ListenerRuntime] = {}
        for lc in config.listeners:
            labels = (("listener", lc.name),)
            filters = build_filters(lc.filters, proxy.stats, labels, proxy.random, now)
            factory = proxy.codec_factory(lc.codec)
            self.listeners[lc.name] = ListenerRuntime(lc, factory, filters, labels)
        self.clusters: dict[str, ClusterRuntime] = {}
        for cc in config.clusters:
            self.clusters[cc.name] = _build_cluster(cc, proxy)


def _build_cluster(cc: ClusterConfig, proxy: Proxy) -> ClusterRuntime:
    endpoints = [EndpointState(e) for e in cc.endpoints]
    balancer = make_balancer(cc.lb_policy, endpoints, proxy.random)
    return ClusterRuntime(cc, endpoints, balancer, (("cluster", cc.name),))


class Proxy:
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
        self.downstreams: dict[int, Downstream] = {}
        self.upstreams: dict[int, Upstream] = {}
        self.pools: dict[tuple[str, str, str], Pool] = {}
        self.calls: dict[int, ActiveRequest] = {}  # external call id -> paused request
        self.decisions: dict[int, Callable[[Any, str], Abort | None]] = {}
        self.draining = False
        self._next_conn = -1  # upstream ids are negative so they never collide with the adapter's
        self._next_call = 1
        self._out: list[Output] = []
        self.runtime = _Runtime(config, self, now)

    # -- public API ------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.runtime.config

    def codec_factory(self, name: str) -> CodecFactory:
        factory = self._codecs.get(name)
        if factory is None:
            from metaprotocol.codecs.registry import get_codec

            factory = self._codecs[name] = get_codec(name)
        return factory

    def handle(self, event: ev.Event, now: float) -> list[Output]:
        self._out = out = []
        match event:
            case ev.DataReceived(conn, data):
                ds = self.downstreams.get(conn)
                if ds is not None:
                    self._downstream_data(ds, data, now)
                else:
                    up = self.upstreams.get(conn)
                    if up is not None:
                        self._upstream_data(up, data, now)
            case ev.Accepted(conn, listener):
                self._accepted(conn, listener, now)
            case ev.UpstreamConnected(conn):
                self._upstream_connected(conn, now)
            case ev.UpstreamConnectFailed(conn, error):
                up = self.upstreams.get(conn)
                if up is not None:
                    self.stats.inc("upstream_cx_connect_fail", up.pool.cluster.labels)
                    self._upstream_gone(up, ErrorType.CONNECT_FAILURE, error or "connect failed", now)
            case ev.EofReceived(conn) | ev.Closed(conn):
                self._conn_ended(conn, isinstance(event, ev.EofReceived), now)
            case ev.WriteBufferHigh(conn):
                self._write_buffer_high(conn)
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
        objects they started with; pools of endpoints no longer configured are retired."""
        self._out = out = []
        new = _Runtime(config, self, now)
        self.runtime = new
        for ds in self.downstreams.values():
            listener = new.listeners.get(ds.listener.config.name)
            if listener is not None and listener.codec_factory is ds.listener.codec_factory:
                ds.listener = listener
        live = {
            (ln, cn, str(e))
            for ln in new.listeners
            for cn, c in new.clusters.items()
            for e in c.config.endpoints
        }
        for key, pool in list(self.pools.items()):
            if key not in live:
                pool.retired = True
                del self.pools[key]
                for up in list(pool.connections):
                    if up.load == 0 and not up.queued:
                        self._close_upstream(up, flush=True)
        self.stats.inc("config_reload")
        self._out = []
        return out

    def drain(self, now: float) -> list[Output]:
        """Stop taking new connections; close each downstream once its replies are written."""
        self._out = out = []
        self.draining = True
        for ds in list(self.downstreams.values()):
            ds.closing = True
            self._maybe_finish_close(ds)
        self._out = []
        return out

    @property
    def drained(self) -> bool:
        return not self.downstreams

    def connection_count(self) -> int:
        return len(self.downstreams) + len(self.upstreams)

    def request_count(self) -> int:
        n = sum(len(ds.active) for ds in self.downstreams.values())
        n += sum(up.load + len(up.streams) for up in self.upstreams.values())
        return n + len(self.calls) + sum(len(p.waiting) for p in self.pools.values())

    # -- downstream side ---------------------------------------------------------------------

    def _accepted(self, conn: int, listener_name: str, now: float) -> None:
        listener = self.runtime.listeners.get(listener_name)
        if listener is None or self.draining:
            self._out.append(CloseConnection(conn, flush=False))
            return
        lc = listener.config
        codec = listener.codec_factory(Side.DOWNSTREAM, lc.codec_options, lc.max_message_size)
        ds = Downstream(conn, listener, codec, now)
        self.downstreams[conn] = ds
        self.stats.inc("downstream_cx_total", listener.labels)
        self.stats.add_gauge("downstream_cx_active", listener.labels, 1)
        if lc.idle_timeout:
            ds.idle_timer = self.timers.schedule(now + lc.idle_timeout, self._idle_check(ds))

    def _idle_check(self, ds: Downstream) -> Callable[[float], None]:
        def check(now: float) -> None:
            if self.downstreams.get(ds.id) is not ds:
                return
            timeout = ds.listener.config.idle_timeout or 0.0
            due = ds.last_activity + timeout
            if ds.active:
                ds.idle_timer = self.timers.schedule(now + timeout, check)
                return
            if due > now:
                ds.idle_timer = self.timers.schedule(due, check)
                return
            self.stats.inc("idle_timeout", ds.listener.labels)
            self._close_downstream(ds, flush=True)

        return check

    def _downstream_data(self, ds: Downstream, data: bytes, now: float) -> None:
        ds.last_activity = now
        if ds.closing:
            return  # a fatal error or drain: only flushing is left
        ds.buffer += data
        self._decode_downstream(ds, now)

    def _decode_downstream(self, ds: Downstream, now: float) -> None:
        codec = ds.codec
        buffer = ds.buffer
        lc = ds.listener.config
        while buffer and not ds.closing:
            if len(ds.active) >= lc.max_pending_requests:
                self._disable(ds, Reason.TOO_MANY_PENDING)
                return
            try:
                msg = codec.decode(buffer)
            except ProtocolError as exc:
                self._decode_failed(ds, exc)
                continue
            if msg is NEED_DATA:
                if len(buffer) > lc.max_message_size:
                    exc = ProtocolError("message too large", ErrorType.MESSAGE_TOO_LARGE)
                    self._decode_failed(ds, exc)
                return
            self._on_request(ds, msg, now)

    def _decode_failed(self, ds: Downstream, exc: ProtocolError) -> None:
        self.stats.inc("request_decoding_error", ds.listener.labels)
        reply = ds.codec.encode_error(None, exc.error_type, str(exc))
        fatal = exc.fatal or reply is None
        if reply is not None:
            self.stats.inc("local_response_error", ds.listener.labels)
            if self.observe:
                self._out.append(LocalReplied(ds.id, exc.error_type, str(exc)))
            if ds.listener.ordered:
                slot = ReplySlot()
                slot.data = reply
                slot.close_after = fatal
                ds.slots.append(slot)
                self._flush_slots(ds)
            else:
                self._out.append(Write(ds.id, reply))
        if fatal:
            ds.buffer.clear()
            ds.closing = True
            self._disable(ds, Reason.CLOSING)
            self._maybe_finish_close(ds)

    def _on_request(self, ds: Downstream, msg: Message, now: float) -> None:
        mtype = msg.type
        labels = ds.listener.labels
        if mtype is MessageType.HEARTBEAT:
            self.stats.inc("heartbeat", labels)
            reply = ds.codec.encode_heartbeat_reply(msg)
            if reply is not None:
                self._out.append(Write(ds.id, reply))
            return
        if mtype in _STREAM_TYPES:
            self._stream_frame(ds, msg, now)
            return
        if not msg.is_request:
            self.stats.inc("request_decoding_error", labels)
            self._decode_failed(ds, ProtocolError(f"unexpected {mtype.value} from client"))
            return
        stats = self.stats
        stats.inc("request", labels)
        stats.inc("request_decoding_success", labels)
        if mtype is MessageType.ONEWAY:
            stats.inc("request_oneway", labels)
        else:
            stats.inc("request_twoway", labels)
        if self.observe:
            self._out.append(Decoded(ds.id, msg.request_id, mtype.value, msg.properties))
        req = ActiveRequest(ds, ds.listener, msg, now)
        if mtype is not MessageType.ONEWAY:
            ds.active.add(req)
            stats.add_gauge("active_requests", labels, 1)
            if ds.listener.ordered:
                req.slot = ReplySlot()
                ds.slots.append(req.slot)
            if mtype is MessageType.STREAM_INIT and msg.request_id is not None:
                ds.streams[msg.request_id] = req
        self._run_filters(req, now)

    # -- filters -----------------------------------------------------------------------------

    def _run_filters(self, req: ActiveRequest, now: float) -> None:
        filters = req.listener.filters
        while req.filter_index < len(filters):
            result = filters[req.filter_index].on_request(req.message.properties, now)
            req.filter_index += 1
            if result is CONTINUE:
                continue
            if isinstance(result, Abort):
                self._local_reply(req, result.error, result.detail, now)
                return
            if isinstance(result, Delay):
                req.pause_timer = self.timers.schedule(now + result.seconds, self._resume(req))
                return
            assert isinstance(result, Call)
            self._external_call(req, result, now)
            return
        self._route(req, now)

    def _resume(self, req: ActiveRequest) -> Callable[[float], None]:
        def resume(now: float) -> None:
            req.pause_timer = None
            if not req.done:
                self._run_filters(req, now)

        return resume

    def _external_call(self, req: ActiveRequest, call: Call, now: float) -> None:
        call_id = self._next_call
        self._next_call += 1
        req.call = call_id
        self.calls[call_id] = req
        decide = call.decide

        def expire(now: float) -> None:
            if self.calls.pop(call_id, None) is req:
                req.call = None
                self._decided(req, decide(None, "timeout"), now)

        req.pause_timer = self.timers.schedule(now + call.timeout, expire)
        self._out.append(ExternalCall(call_id, call.kind, call.payload))
        self.decisions[call_id] = decide

    def _call_completed(self, call_id: int, result: object, error: str, now: float) -> None:
        req = self.calls.pop(call_id, None)
        decide = self.decisions.pop(call_id, None)
        if req is None or decide is None:
            return  # timed out already, or the client went away
        req.call = None
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        self._decided(req, decide(result, error), now)

    def _decided(self, req: ActiveRequest, verdict: Abort | None, now: float) -> None:
        if req.done:
            return
        if verdict is not None:
            self._local_reply(req, verdict.error, verdict.detail, now)
        else:
            self._run_filters(req, now)

    # -- routing -----------------------------------------------------------------------------

    def _route(self, req: ActiveRequest, now: float) -> None:
        msg = req.message
        route = match_route(req.listener.routes, msg.properties)
        if route is None:
            self.stats.inc("route_not_found", req.listener.labels)
            if self.observe and req.downstream is not None:
                self._out.append(NoRouteMatched(req.downstream.id))
            self._local_reply(req, ErrorType.ROUTE_NOT_FOUND, "no route matched", now)
            return
        req.route = route
        action = route.action
        name = pick_cluster(action, self.random)
        cluster = self.runtime.clusters.get(name) if name is not None else None
        if cluster is None:
            self._local_reply(req, ErrorType.CLUSTER_NOT_FOUND, f"cluster {name!r} not found", now)
            return
        req.cluster = cluster
        self.stats.inc("route_hit", (("route", route.name), *req.listener.labels))
        for mirror in action.mirror:
            if mirror.fraction >= 1.0 or self.random() < mirror.fraction:
                self._mirror(req, mirror.cluster, now)
        self._send(req, now)

    def _send(self, req: ActiveRequest, now: float) -> None:
        """Pick an endpoint of ``req.cluster`` and hand the request to its pool."""
        cluster = req.cluster
        route = req.route
        assert cluster is not None and route is not None
        if cluster.active_requests >= cluster.config.circuit_breakers.max_requests:
            self.stats.inc("upstream_rq_pending_overflow", cluster.labels)
            self._local_reply(req, ErrorType.OVER_LIMIT, "cluster max_requests reached", now)
            return
        key = hash_key(route.action, req.message.properties)
        endpoint = cluster.balancer.pick(now, key, req.tried)
        if endpoint is None:
            self._local_reply(req, ErrorType.NO_HEALTHY_UPSTREAM, "no healthy upstream", now)
            return
        pool = self._pool(req.listener, cluster, endpoint)
        up = self._acquire(pool, req, now)
        if up is None:
            return  # answered (overflow) or queued for a free connection
        self._dispatch(req, up, now)

    def _pool(self, listener: ListenerRuntime, cluster: ClusterRuntime, ep: EndpointState) -> Pool:
        key = (listener.config.name, cluster.config.name, ep.label)
        pool = self.pools.get(key)
        if pool is None or pool.cluster is not cluster:
            pool = Pool(key, listener, cluster, ep)
            self.pools[key] = pool
        return pool

    def _acquire(self, pool: Pool, req: ActiveRequest, now: float) -> Upstream | None:
        conns = pool.connections
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
                self.stats.inc("upstream_rq_pending_overflow", pool.cluster.labels)
                self._local_reply(req, ErrorType.OVER_LIMIT, "too many pending requests", now)
                return None
            req.pool = pool
            self._claim(req, pool, now)
            pool.waiting.append(req)
            return None
        best: Upstream | None = None
        for up in conns:
            if best is None or up.load < best.load:
                best = up
        if best is not None and (best.load < SHARE_THRESHOLD or not can_open):
            if not best.connected and len(best.queued) >= breakers.max_pending_requests:
                self.stats.inc("upstream_rq_pending_overflow", pool.cluster.labels)
                self._local_reply(req, ErrorType.OVER_LIMIT, "too many pending requests", now)
                return None
            return best
        if not can_open:
            self.stats.inc("upstream_cx_overflow", pool.cluster.labels)
            self._local_reply(req, ErrorType.OVER_LIMIT, "cluster max_connections reached", now)
            return None
        return self._open(pool, now)

    def _open(self, pool: Pool, now: float) -> Upstream:
        conn = self._next_conn
        self._next_conn -= 1
        codec = pool.codec_factory(Side.UPSTREAM, pool.codec_options, pool.max_message_size)
        up = Upstream(conn, pool, codec)
        pool.connections.append(up)
        pool.cluster.connections += 1
        self.upstreams[conn] = up
        self.stats.inc("upstream_cx_total", pool.cluster.labels)
        ep = pool.endpoint.endpoint
        self._out.append(OpenUpstream(conn, ep.host, ep.port))
        timeout = pool.cluster.config.connect_timeout

        def connect_timeout(now: float) -> None:
            if self.upstreams.get(conn) is up and not up.connected:
                self.stats.inc("upstream_cx_connect_timeout", pool.cluster.labels)
                self._out.append(CloseConnection(conn, flush=False))
                self._upstream_gone(up, ErrorType.CONNECT_FAILURE, "connect timeout", now)

        up.connect_timer = self.timers.schedule(now + timeout, connect_timeout)
        return up

    def _claim(self, req: ActiveRequest, pool: Pool, now: float) -> None:
        """Count the request against its endpoint and cluster; arm its timeout (once)."""
        if req.endpoint is not None:
            return
        req.endpoint = pool.endpoint
        pool.endpoint.active_requests += 1
        pool.cluster.active_requests += 1
        if req.downstream is not None and self.observe:
            assert req.route is not None
            routed = Routed(req.downstream.id, req.route.name, pool.cluster.config.name, pool.endpoint.label)
            self._out.append(routed)
        if req.message.type is MessageType.ONEWAY or req.timer is not None:
            return
        route = req.route
        assert route is not None
        timeout = route.action.timeout or req.listener.config.request_timeout
        if timeout:
            req.timer = self.timers.schedule(now + timeout, self._request_timeout(req))

    def _dispatch(self, req: ActiveRequest, up: Upstream, now: float) -> None:
        """Encode the request for ``up`` and write it (or queue it until connected)."""
        pool = up.pool
        req.pool = pool
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
            data = up.codec.encode(msg, request_id=new_id, mutation=mutation)
        except ProtocolError as exc:
            self._local_reply(req, exc.error_type, str(exc), now)
            return
        req.upstream = up
        req.upstream_id = up_id
        if oneway:
            self._finish(req, "oneway", None, now)
        elif up_id is not None:
            if msg.type is MessageType.STREAM_INIT:
                up.streams[up_id] = req
            else:
                up.inflight[up_id] = req
        else:
            up.fifo.append(req)
        if up.connected:
            self._out.append(Write(up.id, data))
        else:
            up.queued.append(data)
        if up.write_high and req.downstream is not None:
            up.feeders[req.downstream] = None
            self._disable(req.downstream, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def _free_id(self, up: Upstream) -> int:
        while True:
            candidate = up.next_id
            up.next_id = candidate % ID_SPACE + 1
            if candidate not in up.inflight and candidate not in up.streams:
                return candidate

    def _mirror(self, req: ActiveRequest, cluster_name: str, now: float) -> None:
        cluster = self.runtime.clusters.get(cluster_name)
        if cluster is None or req.route is None:
            self.stats.inc("mirror_failed", req.listener.labels)
            return
        shadow = ActiveRequest(None, req.listener, req.message, now)
        shadow.route = req.route
        shadow.cluster = cluster
        shadow.filter_index = len(req.listener.filters)
        self.stats.inc("mirror_sent", cluster.labels)
        self._send(shadow, now)

    # -- streams -----------------------------------------------------------------------------

    def _stream_frame(self, ds: Downstream, msg: Message, now: float) -> None:
        """Data / close frames follow their stream's init frame to the same upstream."""
        sid = msg.request_id
        init = ds.streams.get(sid) if sid is not None else None
        if init is None or init.upstream is None or init.upstream_id is None:
            self._decode_failed(ds, ProtocolError("frame for unknown stream", fatal=False))
            return
        up = init.upstream
        new_id = init.upstream_id if init.upstream_id != sid else None
        data = up.codec.encode(msg, request_id=new_id)
        if up.connected:
            self._out.append(Write(up.id, data))
        else:
            up.queued.append(data)

    def _upstream_stream_frame(self, up: Upstream, msg: Message, now: float) -> None:
        uid = msg.request_id
        init = up.streams.get(uid) if uid is not None else None
        if init is None:
            self.stats.inc("response_dropped", up.pool.cluster.labels)
            return
        ds = init.downstream
        if msg.type is MessageType.STREAM_CLOSE:
            up.streams.pop(uid, None)  # type: ignore[arg-type]
        if ds is None or self.downstreams.get(ds.id) is not ds:
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
        self.stats.add_gauge("upstream_cx_active", pool.cluster.labels, 1)
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
        while buffer:
            try:
                msg = codec.decode(buffer)
            except ProtocolError as exc:
                self.stats.inc("response_decoding_error", up.pool.cluster.labels)
                self._out.append(CloseConnection(up.id, flush=False))
                self._upstream_gone(up, ErrorType.BAD_RESPONSE, str(exc), now)
                return
            if msg is NEED_DATA:
                if len(buffer) > up.pool.max_message_size:
                    self.stats.inc("response_decoding_error", up.pool.cluster.labels)
                    self._out.append(CloseConnection(up.id, flush=False))
                    self._upstream_gone(up, ErrorType.BAD_RESPONSE, "response too large", now)
                return
            self._on_response(up, msg, now)
            if self.upstreams.get(up.id) is not up:
                return

    def _on_response(self, up: Upstream, msg: Message, now: float) -> None:
        mtype = msg.type
        if mtype is MessageType.HEARTBEAT:
            reply = up.codec.encode_heartbeat_reply(msg)
            if reply is not None:
                self._out.append(Write(up.id, reply))
            return  # upstream heartbeats never reach clients
        if mtype in _STREAM_TYPES:
            self._upstream_stream_frame(up, msg, now)
            return
        if msg.properties.get("push") == "1":
            return  # out-of-band (RESP3 push): not an answer to any request
        labels = up.pool.cluster.labels
        if up.pool.ordering is Ordering.MULTIPLEXED:
            rid = msg.request_id
            req = up.inflight.pop(rid, None) if rid is not None else None
            if req is None and rid is not None:
                req = up.streams.get(rid)
        else:
            req = up.fifo.popleft() if up.fifo else None
            if req is None:
                self.stats.inc("response_decoding_error", labels)
                self._out.append(CloseConnection(up.id, flush=False))
                self._upstream_gone(up, ErrorType.BAD_RESPONSE, "unsolicited response", now)
                return
        if req is None or req.done:
            self.stats.inc("response_dropped", labels)  # late (timed out) or abandoned
            self._after_upstream_freed(up, now)
            return
        self.stats.inc("response", req.listener.labels)
        ok = msg.status is ResponseStatus.OK
        self.stats.inc("response_success" if ok else "response_error", req.listener.labels)
        if req.endpoint is not None:
            req.endpoint.consecutive_failures = 0
        ds = req.downstream
        if ds is None:  # a mirror copy: nobody waits for it
            self._finish(req, "ok" if ok else "error", None, now)
        else:
            orig = req.message.request_id
            restore = orig if req.upstream_id != orig else None
            mutation = req.route.action.response_mutation if req.route is not None else None
            data = ds.codec.encode(msg, request_id=restore, mutation=mutation)
            self._answer(req, data, "ok" if ok else "error", None, now)
        self._after_upstream_freed(up, now)

    def _after_upstream_freed(self, up: Upstream, now: float) -> None:
        pool = up.pool
        if pool.retired and up.load == 0 and not up.streams:
            self._close_upstream(up, flush=True)
        elif pool.ordering is Ordering.EXCLUSIVE and pool.waiting:
            self._serve_waiting(pool, now)

    def _upstream_gone(self, up: Upstream, error: ErrorType, detail: str, now: float) -> None:
        """The upstream connection failed or closed: answer (or retry) all it carried."""
        self._forget_upstream(up)
        victims = [*up.inflight.values(), *up.fifo, *up.streams.values()]
        up.inflight.clear()
        up.fifo.clear()
        up.streams.clear()
        up.queued.clear()
        reason = "connect_failure" if error is ErrorType.CONNECT_FAILURE else "reset"
        if error is ErrorType.BAD_RESPONSE:
            reason = "bad_response"
        for req in victims:
            if not req.done:
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
        if self.upstreams.pop(up.id, None) is None:
            return
        pool = up.pool
        if up in pool.connections:
            pool.connections.remove(up)
            pool.cluster.connections -= 1
        if up.connect_timer is not None:
            up.connect_timer.cancel()
        if up.connected:
            self.stats.add_gauge("upstream_cx_active", pool.cluster.labels, -1)
        for ds in up.feeders:
            self._enable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)
        up.feeders.clear()

    def _close_upstream(self, up: Upstream, flush: bool) -> None:
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
            and reason in retries.retry_on
            and req.message.type is not MessageType.ONEWAY
            and req.downstream is not None
        ):
            req.attempts += 1
            if ep is not None:
                req.tried = req.tried | {ep.label}
            self._unclaim(req)
            assert req.cluster is not None
            self.stats.inc("upstream_rq_retry", req.cluster.labels)
            self._send(req, now)
            return
        if req.downstream is None:
            self.stats.inc("mirror_failed", req.listener.labels)
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
        ep.ejected_until = now + od.base_ejection_time * ep.ejection_count
        ep.consecutive_failures = 0
        self.stats.inc("outlier_ejection", cluster.labels)

    def _release_upstream(self, req: ActiveRequest) -> None:
        """Remove ``req`` from its upstream connection's tables (it stays counted)."""
        up = req.upstream
        if up is not None:
            uid = req.upstream_id
            if uid is not None:
                if up.inflight.get(uid) is req:
                    del up.inflight[uid]
                if up.streams.get(uid) is req:
                    del up.streams[uid]
            # Ordered connections keep the entry as a placeholder: the response still comes
            # and must be matched to this (now finished) request to keep the order right.
            req.upstream = None
        pool = req.pool
        if pool is not None and pool.waiting and req in pool.waiting:
            pool.waiting.remove(req)

    def _unclaim(self, req: ActiveRequest) -> None:
        ep = req.endpoint
        if ep is not None:
            ep.active_requests -= 1
            req.endpoint = None
            if req.pool is not None:
                req.pool.cluster.active_requests -= 1
        req.pool = None

    def _request_timeout(self, req: ActiveRequest) -> Callable[[float], None]:
        def fire(now: float) -> None:
            req.timer = None
            if req.done:
                return
            labels = req.cluster.labels if req.cluster is not None else req.listener.labels
            self.stats.inc("upstream_rq_timeout", labels)
            self._upstream_failed(req, ErrorType.TIMEOUT, "timeout", "request timed out", now)

        return fire

    # -- answers -----------------------------------------------------------------------------

    def _local_reply(self, req: ActiveRequest, error: ErrorType, detail: str, now: float) -> None:
        ds = req.downstream
        if ds is None or req.message.type is MessageType.ONEWAY:
            self._finish(req, "local_error", error, now)
            return
        reply = ds.codec.encode_error(req.message, error, detail)
        self.stats.inc("local_response_error", req.listener.labels)
        if self.observe:
            self._out.append(LocalReplied(ds.id, error, detail))
        if reply is None:
            self._finish(req, "local_error", error, now)
            if self.downstreams.get(ds.id) is ds:
                self._close_downstream(ds, flush=True)
            return
        self._answer(req, reply, "local_error", error, now)

    def _answer(
        self, req: ActiveRequest, data: bytes, status: str, error: ErrorType | None, now: float
    ) -> None:
        """Hand ``data`` to the request's client, in order for ordered protocols."""
        ds = req.downstream
        completed = self._finish(req, status, error, now, emit=False)
        if ds is None or self.downstreams.get(ds.id) is not ds:
            return
        slot = req.slot
        if slot is not None:
            slot.data = data
            if req.message.properties.get("connection") == "close":
                slot.close_after = True
            self._flush_slots(ds)
        else:
            self._out.append(Write(ds.id, data))
        if completed is not None:
            self._out.append(completed)
        if self.downstreams.get(ds.id) is not ds:
            return
        if ds.gate.reasons and Reason.TOO_MANY_PENDING in ds.gate.reasons:
            if len(ds.active) < ds.listener.config.max_pending_requests:
                self._enable(ds, Reason.TOO_MANY_PENDING)
                self._decode_downstream(ds, now)
        self._maybe_finish_close(ds)

    def _flush_slots(self, ds: Downstream) -> None:
        slots = ds.slots
        chunks: list[bytes] = []
        close = False
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            chunks.append(slot.data)  # type: ignore[arg-type]
            if slot.close_after:
                close = True
                break
        if chunks:
            self._out.append(Write(ds.id, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
        if close:
            self._close_downstream(ds, flush=True)

    def _finish(
        self,
        req: ActiveRequest,
        status: str,
        error: ErrorType | None,
        now: float,
        emit: bool = True,
    ) -> RequestCompleted | None:
        """Mark ``req`` done and remove every trace of it from the tables. Returns the
        observer event (appended to the outputs unless ``emit`` is False)."""
        if req.done:
            return None
        req.done = True
        endpoint = req.pool.endpoint.label if req.pool is not None else ""
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        if req.call is not None:
            self.calls.pop(req.call, None)
            self.decisions.pop(req.call, None)
            req.call = None
        if status != "oneway":
            self._release_upstream(req)
        self._unclaim(req)
        ds = req.downstream
        if ds is not None and req in ds.active:
            ds.active.discard(req)
            self.stats.add_gauge("active_requests", req.listener.labels, -1)
            mid = req.message.request_id
            if req.message.type is MessageType.STREAM_INIT and mid is not None:
                if ds.streams.get(mid) is req:
                    del ds.streams[mid]
        duration = now - req.start
        self.stats.observe("request_duration_seconds", req.listener.labels, duration)
        if not self.observe or ds is None:
            return None
        completed = RequestCompleted(
            ds.id,
            req.listener.config.name,
            req.route.name if req.route is not None else "",
            req.cluster.config.name if req.cluster is not None else "",
            endpoint,
            status,
            error,
            duration,
            req.message.properties,
        )
        if emit:
            self._out.append(completed)
        return completed

    # -- connection lifecycle ----------------------------------------------------------------

    def _conn_ended(self, conn: int, eof: bool, now: float) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            if eof and (ds.active or ds.slots):
                ds.closing = True  # half-closed client: answer what it asked, then close
                self._maybe_finish_close(ds)
                return
            if ds.active:
                self.stats.inc("cx_destroy_remote_with_active_rq", ds.listener.labels)
            self._drop_downstream(ds, now)
            if eof:
                self._out.append(CloseConnection(conn, flush=True))
            return
        up = self.upstreams.get(conn)
        if up is not None:
            if eof:
                self._out.append(CloseConnection(conn, flush=False))
            self._upstream_gone(up, ErrorType.UPSTREAM_RESET, "upstream connection closed", now)

    def _maybe_finish_close(self, ds: Downstream) -> None:
        if ds.closing and not ds.active and not ds.slots and self.downstreams.get(ds.id) is ds:
            self._close_downstream(ds, flush=True)

    def _close_downstream(self, ds: Downstream, flush: bool) -> None:
        if self.downstreams.get(ds.id) is not ds:
            return
        if ds.active:
            self.stats.inc("cx_destroy_local_with_active_rq", ds.listener.labels)
        self._out.append(CloseConnection(ds.id, flush=flush))
        self._drop_downstream(ds, None)

    def _drop_downstream(self, ds: Downstream, now: float | None) -> None:
        """Forget a downstream connection and everything it owned upstream."""
        del self.downstreams[ds.id]
        self.stats.add_gauge("downstream_cx_active", ds.listener.labels, -1)
        if ds.idle_timer is not None:
            ds.idle_timer.cancel()
        for req in list(ds.active):
            self._finish(req, "abandoned", None, now if now is not None else req.start)
        ds.slots.clear()
        ds.streams.clear()
        ds.buffer.clear()
        for up in self.upstreams.values():
            up.feeders.pop(ds, None)

    # -- flow control ------------------------------------------------------------------------

    def _disable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.disable(reason):
            self._out.append(ReadDisable(ds.id))

    def _enable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.enable(reason) and self.downstreams.get(ds.id) is ds:
            self._out.append(ReadEnable(ds.id))

    def _write_buffer_high(self, conn: int) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            self._disable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
            return
        up = self.upstreams.get(conn)
        if up is None or up.write_high:
            return
        up.write_high = True
        self.stats.inc("upstream_flow_control_paused", up.pool.cluster.labels)
        for req in (*up.inflight.values(), *up.fifo):
            ds = req.downstream
            if ds is not None and not req.done and self.downstreams.get(ds.id) is ds:
                up.feeders[ds] = None
                self._disable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def _write_buffer_low(self, conn: int, now: float) -> None:
        ds = self.downstreams.get(conn)
        if ds is not None:
            self._enable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
            return
        up = self.upstreams.get(conn)
        if up is None or not up.write_high:
            return
        up.write_high = False
        feeders = list(up.feeders)
        up.feeders.clear()
        for ds in feeders:
            # Another full upstream may still hold this connection back.
            if not any(ds in other.feeders for other in self.upstreams.values()):
                self._enable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)


def _no_random() -> float:
    """The default randomness: none. Weighted picks and fractions then take the first
    choice; pass ``random=`` (e.g. ``random.Random(seed).random``) for real spreading."""
    return 0.0


"""Upstream pools: which connection of an endpoint takes a request, opening connections,
the connection circuit breakers, retiring pools on reload (docs/architecture.md).

``Pools.acquire`` never answers a client: it returns an outcome (the connection, ``QUEUED``,
or ``Rejected``) and its caller decides what the client gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

from metaprotocol.core.balancer import EndpointState
from metaprotocol.core.codec import OpensWithPreamble, Ordering, Side
from metaprotocol.core.context import Context
from metaprotocol.core.flow import FlowControl
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.message import ErrorType, MessageType
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Routed
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.slotrouting import READONLY_VARIANT
from metaprotocol.core.state import ActiveRequest, ClusterRuntime, Pool, Upstream
from metaprotocol.core.tables import attach_endpoint, attach_waiting
from metaprotocol.core.timers import DeadlineQueue

__all__ = ["QUEUED", "SHARE_THRESHOLD", "Pools", "Queued", "Rejected"]

# Upstream connections are shared: a new one opens only when every open one carries
# this many requests (and the per-endpoint limit allows).
SHARE_THRESHOLD = 64


class Rejected:
    """A pool refused the request (a circuit breaker): the error the client gets."""

    __slots__ = ("detail", "error")

    def __init__(self, error: ErrorType, detail: str) -> None:
        self.error = error
        self.detail = detail


class Queued:
    """The request waits in the pool for a free connection (exclusive protocols)."""

    __slots__ = ()


QUEUED: Final = Queued()
_TOO_MANY_PENDING: Final = Rejected(ErrorType.OVER_LIMIT, "too many pending requests")
_MAX_CONNECTIONS: Final = Rejected(ErrorType.OVER_LIMIT, "cluster max_connections reached")
# Enum members as module constants: a compiled build reads these without a class lookup.
_MULTIPLEXED: Final = Ordering.MULTIPLEXED
_ORDERED: Final = Ordering.ORDERED
_EXCLUSIVE: Final = Ordering.EXCLUSIVE
_ONEWAY: Final = MessageType.ONEWAY


def _no_timeout(target: object, now: float) -> None:
    pass


class Pools:
    """The pools of every endpoint and their connections.

    Timer callbacks point up the graph, wired by the facade: ``on_request_timeout``
    (``UpstreamSide.request_timeout``) and ``on_connect_timeout``
    (``UpstreamSide.connect_timeout``)."""

    __slots__ = ("ctx", "flow", "observe", "on_connect_timeout", "on_request_timeout", "out")

    def __init__(self, ctx: Context, flow: FlowControl) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.observe = ctx.observe
        self.flow = flow
        self.on_request_timeout: Callable[[ActiveRequest, float], None] = _no_timeout
        self.on_connect_timeout: Callable[[Upstream, float], None] = _no_timeout

    def acquire(
        self, req: ActiveRequest, endpoint: EndpointState, now: float
    ) -> Upstream | Queued | Rejected:
        """The connection to ``endpoint`` that takes ``req`` (possibly a new one, not
        connected yet), or ``QUEUED`` (it waits in the pool), or ``Rejected`` (a breaker
        tripped: the caller answers the client)."""
        listener = req.listener
        ds = req.downstream
        pool = None
        if req.hop is None and not (  # (a Redis Cluster hop may ask for a variant)
            listener.caps.preamble and ds is not None and cast(OpensWithPreamble, ds.codec).variant
        ):
            pool = endpoint.pools.get(listener.config.name)  # no variant: the listener's pool
        if pool is None:
            pool = self.pool(req, endpoint)
        conns = pool.connections
        if (
            pool.ordering is _MULTIPLEXED
            and len(conns) == 1
            and conns[0].connected
            and len(conns[0].inflight) < SHARE_THRESHOLD
        ):
            return conns[0]  # the common case: one warm shared connection
        return self.acquire_from(pool, req, now)

    def pool(self, req: ActiveRequest, endpoint: EndpointState) -> Pool:
        """The pool of ``req``'s listener (and codec variant) to ``endpoint``."""
        listener = req.listener
        ds = req.downstream
        # A codec may need upstream connections of a kind (Redis: RESP3 after HELLO 3).
        variant: str = ""
        if ds is not None and listener.caps.preamble:
            variant = cast(OpensWithPreamble, ds.codec).variant
        hop = req.hop
        if hop is not None and hop.readonly:  # a Redis Cluster replica read
            variant = f"{variant}+{READONLY_VARIANT}" if variant else READONLY_VARIANT
        key = listener.config.name if not variant else f"{listener.config.name}/{variant}"
        pool = endpoint.pools.get(key)
        if pool is None:
            assert req.cluster is not None
            pool = Pool(listener, req.cluster, endpoint, key, variant)
            self.ctx.attach_pool(pool)
        return pool

    def acquire_from(
        self, pool: Pool, req: ActiveRequest, now: float
    ) -> Upstream | Queued | Rejected:
        """``acquire`` once the pool is known."""
        ordering = pool.ordering
        ds = req.downstream
        if ordering is not _ORDERED or ds is None:
            return self._choose(pool, req, now)
        # FIFO protocols: one client's requests stay on one upstream connection, or a
        # pipelined SET then GET could run in the other order on two connections.
        up = ds.pinned.get(pool)
        if up is not None and not up.closed:
            return up
        chosen = self._choose(pool, req, now)
        if isinstance(chosen, Upstream):
            ds.pinned[pool] = chosen
        return chosen

    def _choose(self, pool: Pool, req: ActiveRequest, now: float) -> Upstream | Queued | Rejected:
        conns = pool.connections
        if len(conns) == 1 and pool.ordering is not _EXCLUSIVE:
            only = conns[0]
            if only.load < SHARE_THRESHOLD and only.connected and not only.blocked_by:
                return only  # the common case: one shared, connected, lightly loaded connection
        limit = pool.cluster.config.max_connections_per_endpoint
        breakers = pool.cluster.config.circuit_breakers
        can_open = len(conns) < limit and pool.cluster.connections < breakers.max_connections
        if pool.ordering is _EXCLUSIVE:
            for up in conns:
                if up.load == 0 and not up.queued:
                    return up
            if can_open:
                return self.open(pool, now)
            if len(pool.waiting) >= breakers.max_pending_requests:
                pool.cluster.counters.upstream_rq_pending_overflow += 1
                return _TOO_MANY_PENDING
            attach_waiting(pool, req)
            self.claim(req, pool, now)
            advance(req, RequestState.QUEUED)
            return QUEUED
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
                return _TOO_MANY_PENDING
            return best
        if not can_open:
            pool.cluster.counters.upstream_cx_overflow += 1
            return _MAX_CONNECTIONS
        return self.open(pool, now)

    def open(self, pool: Pool, now: float) -> Upstream:
        """A new connection of ``pool`` (``OpenUpstream``; connected on ``UpstreamConnected``)."""
        ctx = self.ctx
        conn = ctx.next_conn
        ctx.next_conn -= 1
        codec = pool.codec_factory(Side.UPSTREAM, pool.codec_options, pool.max_message_size)
        up = Upstream(conn, pool, codec)
        auth = pool.cluster.config.auth
        # What the connection opens with (a protocol switch, a login); the codec consumes the
        # server's answer, and a refusal is a connect failure (see UpstreamSide.data). The
        # config loader refuses ``auth`` for a codec without the hook.
        if (pool.variant or auth is not None) and pool.caps.preamble:
            up.queued.append(cast(OpensWithPreamble, codec).preamble(pool.variant, auth))
        ctx.attach_upstream(up)
        ep = pool.endpoint.endpoint
        self.out.append(OpenUpstream(conn, ep.host, ep.port, pool.cluster.config.tls))
        deadline = now + pool.cluster.config.connect_timeout
        up.connect_timer = ctx.timers.schedule(deadline, self.on_connect_timeout, up)
        return up

    def free_connection(self, pool: Pool) -> Upstream | None:
        """An idle connection of an exclusive pool, if there is one."""
        return next((u for u in pool.connections if u.load == 0 and not u.queued), None)

    def claim(self, req: ActiveRequest, pool: Pool, now: float) -> None:
        """Count the request against its endpoint and cluster; arm its timeout (once)."""
        if not attach_endpoint(req, pool):
            return
        if req.downstream is not None and self.observe:
            assert req.route is not None
            routed = Routed(
                req.downstream.id, req.route.name, pool.cluster.config.name, pool.endpoint.label
            )
            self.out.append(routed)
        if req.message.type is _ONEWAY or req.deadline_queue is not None:
            return  # no answer to wait for, or the deadline of an earlier try still runs
        route = req.route
        assert route is not None
        timeout = route.action.timeout or req.listener.config.request_timeout
        if timeout:
            queues = self.ctx.deadline_queues
            queue = queues.get(timeout)
            if queue is None:
                queue = DeadlineQueue(self.ctx.timers, timeout, self.on_request_timeout)
                queues[timeout] = queue
            queue.add(req, now)
            req.deadline_queue = queue

    # -- the end of connections and pools ----------------------------------------------------

    def forget(self, up: Upstream) -> None:
        """``up`` is gone (it failed, or was closed): out of every table."""
        if not self.ctx.detach_upstream(up):
            return
        if up.connect_timer is not None:
            up.connect_timer.cancel()
        self.flow.forget_upstream(up)

    def close(self, up: Upstream, flush: bool) -> None:
        if not up.closed:
            self.out.append(CloseConnection(up.id, flush=flush))
            self.forget(up)

    def retire(self, pool: Pool) -> None:
        """No new requests go to ``pool``; its connections close once they are idle."""
        self.ctx.retire_pool(pool)
        for up in list(pool.connections):
            if up.load == 0 and not up.queued and not up.streams:
                self.close(up, flush=True)

    def carry_over(self, old: Runtime, new: Runtime) -> None:
        """On reload: endpoints that stay keep their pools (and warm connections) and their
        outlier state; the pools of endpoints or listeners that went away are retired."""
        kept: set[Pool] = set()
        for name, cluster in new.clusters.items():
            previous = old.clusters.get(name)
            if previous is not None:
                kept |= self.carry_cluster(previous, cluster, new)
        for pool in list(self.ctx.pools):
            if pool not in kept:
                self.retire(pool)

    def carry_cluster(
        self, previous: ClusterRuntime, cluster: ClusterRuntime, new: Runtime
    ) -> set[Pool]:
        """Move the pools and outlier state of ``previous``'s endpoints that remain in
        ``cluster`` (its replacement) over to it; the pools moved. The caller retires the
        others (``retire``). One cluster at a time: what a change of one cluster's endpoints
        needs, not only a reload."""
        kept: set[Pool] = set()
        if previous.config.tls != cluster.config.tls:
            return kept  # its connections must be opened with other TLS settings
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
        return kept

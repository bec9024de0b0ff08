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

from metaprotocol.codecs.redis.cluster import SlotMap
from metaprotocol.core import events as ev
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import Config, TracingConfig
from metaprotocol.core.context import Context
from metaprotocol.core.downstream import Downstreams
from metaprotocol.core.filterchain import FilterChain
from metaprotocol.core.flow import FlowControl
from metaprotocol.core.lifecycle import PendingCall
from metaprotocol.core.merging import PipelineMerge
from metaprotocol.core.mesh import Mesh
from metaprotocol.core.outputs import Output
from metaprotocol.core.pools import Pools
from metaprotocol.core.replies import Replies
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.router import Router
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.sender import Sender
from metaprotocol.core.state import Downstream, Upstream
from metaprotocol.core.stats import EndpointStatus, Stats
from metaprotocol.core.timers import Timers
from metaprotocol.core.upstream_side import UpstreamSide

__all__ = ["Proxy"]


class Proxy:
    """The engine's facade: it dispatches each event to the collaborator that owns it and
    hands the outputs back. See the module docstring for the contract; the collaborators
    and how a request flows through them: docs/architecture.md."""

    __slots__ = (
        "_codecs",
        "ctx",
        "downstream",
        "filters",
        "flow",
        "lifecycle",
        "merge",
        "mesh",
        "pools",
        "replies",
        "router",
        "sender",
        "upstream",
    )

    def __init__(
        self,
        config: Config,
        *,
        now: float,
        codecs: Mapping[str, CodecFactory] | None = None,
        random: Callable[[], float] | None = None,
        observe: bool = True,
    ) -> None:
        self._codecs = dict(codecs or {})
        ctx = self.ctx = Context(now, random if random is not None else _no_random, observe)
        ctx.runtime = Runtime(config, ctx.stats, ctx.random, self.codec_factory, now)
        ctx.tracing = config.tracing
        # The collaborators, each built from those below it (no cycles): see
        # docs/architecture.md, "The parts of the core".
        self.flow = FlowControl(ctx.out)
        self.lifecycle = RequestLifecycle(ctx)
        self.replies = Replies(ctx, self.lifecycle, self.flow)
        self.pools = Pools(ctx, self.flow)
        self.sender = Sender(ctx, self.lifecycle, self.replies, self.pools, self.flow)
        self.router = Router(ctx, self.replies, self.sender)
        self.filters = FilterChain(ctx, self.replies, self.router)
        self.merge = PipelineMerge(ctx.out)
        self.upstream = UpstreamSide(
            ctx, self.lifecycle, self.replies, self.pools, self.sender, self.flow, self.merge
        )
        self.downstream = Downstreams(
            ctx, self.lifecycle, self.replies, self.flow, self.filters, self.router, self.merge
        )
        # The edges that point up the graph, as callbacks (docs/architecture.md).
        self.replies.resume_reading = self.downstream.decode
        self.replies.abandon = self.upstream.abandoned_on
        self.pools.on_request_timeout = self.upstream.request_timeout
        self.pools.on_connect_timeout = self.upstream.connect_timeout
        # Run-time endpoint sets and active health checks (core/mesh.py).
        self.mesh = Mesh(ctx, self.pools)
        self.mesh.configure(now)

    # -- public API ------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.ctx.runtime.config

    @property
    def runtime(self) -> Runtime:
        """The current listeners, routes and clusters (swapped whole on reload)."""
        return self.ctx.runtime

    @property
    def stats(self) -> Stats:
        return self.ctx.stats

    @property
    def timers(self) -> Timers:
        return self.ctx.timers

    @property
    def observe(self) -> bool:
        return self.ctx.observe

    @property
    def random(self) -> Callable[[], float]:
        return self.ctx.random

    @property
    def tracing(self) -> TracingConfig | None:
        return self.ctx.tracing

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    @property
    def downstreams(self) -> dict[int, Downstream]:
        return self.ctx.downstreams

    @property
    def upstreams(self) -> dict[int, Upstream]:
        return self.ctx.upstreams

    @property
    def calls(self) -> dict[int, PendingCall]:
        return self.ctx.calls

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        """Health and load of every upstream endpoint (the admin's ``/clusters``)."""
        return self.mesh.annotate(self.ctx.runtime.endpoint_statuses(now))

    def codec_factory(self, name: str) -> CodecFactory:
        factory = self._codecs.get(name)
        if factory is None:
            from metaprotocol.codecs.registry import get_codec

            factory = self._codecs[name] = get_codec(name)
        return factory

    def handle(self, event: ev.Event, now: float) -> list[Output]:
        ctx = self.ctx
        ctx.now = now
        out = ctx.out
        # (the outputs are returned as ``outputs``, never ``result``: the ``match`` below
        # binds ``result``, and a compiled build gives a local one type)
        if isinstance(event, ev.DataReceived):  # the hot path, ahead of the general dispatch
            ds = ctx.downstreams.get(event.conn)
            if ds is not None:
                ds.last_activity = now
                if not ds.closing:  # closing: a fatal error or drain, only flushing is left
                    ds.buffer += event.data
                    self.downstream.decode(ds, now)
            else:
                up = ctx.upstreams.get(event.conn)
                if up is not None:
                    self.upstream.data(up, event.data, now)
                elif self.mesh.owns(event.conn):
                    self.mesh.data(event.conn, event.data, now)
            heap = ctx.timers.heap
            if heap and heap[0][0] <= now:
                ctx.timers.fire_due(now)
            outputs = out[:]
            del out[:]
            return outputs
        match event:
            case ev.Accepted(conn, listener, peer):
                self.downstream.accepted(conn, listener, peer, now)
            case ev.UpstreamConnected(conn):
                if self.mesh.owns(conn):
                    self.mesh.connected(conn, now)
                else:
                    self.upstream.connected(conn, now)
            case ev.UpstreamConnectFailed(conn, error):
                up = ctx.upstreams.get(conn)
                if up is not None:
                    # The adapter's error names the address: it goes to the log (the
                    # event), the clients' replies only say what kind of failure it was.
                    self.upstream.connect_failed(up, error or "refused", now)
                elif self.mesh.owns(conn):
                    self.mesh.connect_failed(conn, now)
            case ev.EofReceived(conn) | ev.Closed(conn):
                eof = isinstance(event, ev.EofReceived)
                ds = ctx.downstreams.get(conn)
                if ds is not None:
                    self.downstream.ended(ds, eof, now)
                else:
                    up = ctx.upstreams.get(conn)
                    if up is not None:
                        self.upstream.ended(up, eof, now)
                    elif self.mesh.owns(conn):
                        self.mesh.ended(conn, now)
            case ev.WriteBufferHigh(conn):
                ds = ctx.downstreams.get(conn)
                if ds is not None:
                    self.flow.slow_reader(ds)
                else:
                    up = ctx.upstreams.get(conn)
                    if up is not None:
                        self.flow.upstream_full(up)
            case ev.WriteBufferGrew(conn, size):
                ds = ctx.downstreams.get(conn)
                if ds is not None:
                    self.downstream.write_buffer_grew(ds, size)
            case ev.WriteBufferLow(conn):
                ds = ctx.downstreams.get(conn)
                if ds is not None:
                    self.downstream.write_buffer_low(ds, now)
                else:
                    up = ctx.upstreams.get(conn)
                    if up is not None:
                        self.flow.upstream_drained(up)
            case ev.ExternalCallCompleted(call, result, error):
                self.filters.call_completed(call, result, error, now)
            case ev.SlotMapChanged(cluster, slot_map):
                self.slot_map_changed(cluster, slot_map)
            case ev.EndpointsChanged(cluster, endpoints):
                self.mesh.endpoints_changed(cluster, endpoints, now)
            case ev.TimePassed():
                pass
        self.mesh.tick(now)
        ctx.timers.fire_due(now)
        outputs = out[:]
        del out[:]
        return outputs

    def slot_map_changed(self, name: str, slot_map: SlotMap) -> None:
        """A Redis Cluster's new slot map (core/slotrouting.py); the pools of nodes it no
        longer names are retired (they close once their requests are answered)."""
        cluster = self.ctx.runtime.clusters.get(name)
        if cluster is None or cluster.slots is None:
            return  # gone, or no longer a Redis Cluster, since a reload
        for ep in cluster.slots.changed(slot_map):
            for pool in list(ep.pools.values()):
                self.pools.retire(pool)

    def next_deadline(self) -> float | None:
        deadline = self.ctx.timers.next_deadline()
        probe = self.mesh.due
        if probe is not None and (deadline is None or probe < deadline):
            return probe
        return deadline

    def reload(self, config: Config, now: float) -> list[Output]:
        """Swap routes, clusters and filters atomically. In-flight requests finish on the
        objects they started with; pools of endpoints no longer configured are retired. The
        connections of a listener no longer configured drain: their in-flight requests are
        answered, nothing more is read, then they close."""
        ctx = self.ctx
        ctx.now = now
        config = self.mesh.overlay(config)  # discovered endpoint sets stay
        new = Runtime(config, ctx.stats, ctx.random, self.codec_factory, now)
        old = ctx.runtime
        ctx.runtime = new
        ctx.tracing = config.tracing
        for name, cluster in new.clusters.items():  # a Redis Cluster keeps its slot map
            previous = old.clusters.get(name)
            known = previous.slots.slot_map if previous and previous.slots else None
            if cluster.slots is not None and known is not None:
                cluster.slots.changed(known)
        for ds in list(ctx.downstreams.values()):
            listener = new.listeners.get(ds.listener.config.name)
            if listener is None:  # the listener is gone: its connections drain, as on SIGTERM
                ds.closing = True
                self.replies.maybe_finish_close(ds)
            elif listener.codec_factory is ds.listener.codec_factory:
                ds.listener = listener
        self.pools.carry_over(old, new)
        self.mesh.configure(now)
        ctx.stats.inc("config_reload")
        return self._take_outputs()

    def drain(self, now: float) -> list[Output]:
        """Stop taking new connections; close each downstream once its replies are written."""
        ctx = self.ctx
        ctx.now = now
        ctx.draining = True
        for ds in list(ctx.downstreams.values()):
            ds.closing = True
            self.replies.maybe_finish_close(ds)
        return self._take_outputs()

    def _take_outputs(self) -> list[Output]:
        out = self.ctx.out
        outputs = out[:]
        del out[:]
        return outputs

    @property
    def drained(self) -> bool:
        return not self.ctx.downstreams

    def live_timers(self) -> int:
        """Armed timers that still stand for something (idle deadline watchers do not)."""
        ctx = self.ctx
        idle = sum(1 for queue in ctx.deadline_queues.values() if queue.idle_check)
        return len(ctx.timers) - idle

    def connection_count(self) -> int:
        return len(self.ctx.downstreams) + len(self.ctx.upstreams)

    def request_count(self) -> int:
        ctx = self.ctx
        n = sum(len(ds.active) for ds in ctx.downstreams.values())
        n += sum(up.load + len(up.streams) for up in ctx.upstreams.values())
        return n + len(ctx.calls) + sum(len(p.waiting) for p in ctx.pools)


def _no_random() -> float:
    """The default randomness: none. Weighted picks and fractions then take the first
    choice; pass ``random=`` (e.g. ``random.Random(seed).random``) for real spreading."""
    return 0.0

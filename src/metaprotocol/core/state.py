"""The engine's bookkeeping objects: downstream and upstream connections, pools, requests."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from metaprotocol.core.codec import (
    Capabilities,
    Codec,
    CodecFactory,
    Ordering,
    PartFailed,
    capabilities_of,
)
from metaprotocol.core.flow import ReadGate
from metaprotocol.core.lifecycle import RequestState
from metaprotocol.core.message import Message
from metaprotocol.core.stats import ClusterCounters, ListenerCounters, RouteCounters, Stats

if TYPE_CHECKING:
    from metaprotocol.core.balancer import Balancer, EndpointState
    from metaprotocol.core.config import ClusterConfig, ListenerConfig, RouteConfig
    from metaprotocol.core.filters import Filter
    from metaprotocol.core.slotrouting import ClusterHop, SlotRouting
    from metaprotocol.core.stats import Labels
    from metaprotocol.core.timers import DeadlineQueue, Timer
    from metaprotocol.core.tracing import TraceSpan

_ANSWERED: Final = RequestState.ANSWERED  # the first final state

__all__ = [
    "ActiveRequest",
    "ClusterRuntime",
    "Downstream",
    "ListenerRuntime",
    "Pool",
    "ReplySlot",
    "Split",
    "Upstream",
]


class ListenerRuntime:
    """A listener's config plus what the engine derives from it once."""

    __slots__ = (
        "batchable",
        "caps",
        "codec_factory",
        "config",
        "counters",
        "duration",
        "filters",
        "labels",
        "ordered",
        "route_counters",
        "route_reads",
        "routes",
        "splits",
    )

    def __init__(
        self,
        config: ListenerConfig,
        codec_factory: CodecFactory,
        filters: list[Filter],
        labels: Labels,
        stats: Stats,
    ) -> None:
        self.config = config
        self.counters = stats.block(ListenerCounters, labels)
        self.duration = stats.histogram("request_duration_seconds", labels)
        self.route_counters = {
            r.name: stats.block(RouteCounters, (("route", r.name), *labels)) for r in config.routes
        }
        self.codec_factory = codec_factory
        self.filters = filters
        self.labels = labels
        self.routes: tuple[RouteConfig, ...] = config.routes
        # The property names any route matches on (fanout.SplitTarget: keys whose
        # properties agree on these take the same route, so it is matched once for them).
        self.route_reads: tuple[str, ...] = tuple(
            sorted({name for route in config.routes for name, _ in route.match.metadata})
        )
        self.ordered = codec_factory.ordering is not Ordering.MULTIPLEXED
        # Optional codec hooks, looked up once here rather than per message.
        self.caps: Capabilities = capabilities_of(codec_factory)
        # Whether the router asks the codec to split requests (``SplitsRequests``): not when
        # every request goes to one place anyway (set by Runtime: fanout.one_target).
        self.splits = self.caps.split
        # Whether pipelined requests that take the same route may travel as one merged
        # message (the codec's ``decode_many``): only when nothing on the way needs to see
        # each request on its own (filters count them, mirrors and mutations copy or change
        # them, a hash or a weighted pick may send each elsewhere).
        self.batchable = (
            self.caps.decode_many
            and codec_factory.ordering is Ordering.ORDERED  # exclusive: one at a time
            and not filters
            and all(_merges(route) for route in config.routes)
        )


def _merges(route: RouteConfig) -> bool:
    action = route.action
    retries = action.retries
    return (
        action.cluster is not None
        and not action.hash_policy
        and not action.mirror
        and action.request_mutation is None
        and action.response_mutation is None
        and (retries is None or retries.non_idempotent is None)
    )


class ClusterRuntime:
    __slots__ = (
        "active_requests",
        "balancer",
        "config",
        "connections",
        "counters",
        "duration",
        "endpoints",
        "labels",
        "outcomes",
        "slots",
    )

    def __init__(
        self,
        config: ClusterConfig,
        endpoints: list[EndpointState],
        balancer: Balancer,
        labels: Labels,
        stats: Stats,
    ) -> None:
        self.config = config
        self.counters = stats.block(ClusterCounters, labels)
        # Every request routed here, by how it ended (RequestCompleted's status), and its
        # duration from decode to answer.
        self.outcomes = stats.tally("upstream_rq", labels, "status")
        self.duration = stats.histogram("upstream_rq_duration_seconds", labels)
        self.endpoints = endpoints
        self.balancer = balancer
        self.labels = labels
        self.active_requests = 0
        self.connections = 0
        # A Redis Cluster (``redis_cluster``): its slot map and nodes (core/slotrouting.py).
        self.slots: SlotRouting | None = None


class ReplySlot:
    """A place in a downstream connection's reply order (ordered protocols only)."""

    __slots__ = ("close_after", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close_after = False


class ActiveRequest:
    """One request from decode until its answer is handed to the downstream connection."""

    __slots__ = (
        "attempts",
        "call",
        "cluster",
        "deadline_queue",
        "downstream",
        "early",
        "endpoint",
        "filter_index",
        "hop",
        "listener",
        "message",
        "parent",
        "part",
        "partial",
        "pause_timer",
        "pool",
        "remaining",
        "resent",
        "route",
        "slot",
        "span",
        "split",
        "start",
        "state",
        "timer",
        "tried",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self,
        downstream: Downstream | None,
        listener: ListenerRuntime,
        message: Message,
        start: float,
    ) -> None:
        self.downstream = downstream  # None: a mirror copy nobody waits for
        self.listener = listener
        self.message = message
        self.start = start
        self.route: RouteConfig | None = None
        self.cluster: ClusterRuntime | None = None
        self.endpoint: EndpointState | None = None
        self.pool: Pool | None = None
        self.upstream: Upstream | None = None
        self.upstream_id: int | None = None
        # The request timeout: an entry in a DeadlineQueue (the usual case), or a heap timer
        # for an abandoned request's leftover deadline (see UpstreamSide.abandoned_on).
        self.deadline_queue: DeadlineQueue | None = None
        self.timer: Timer | None = None
        self.pause_timer: Timer | None = None
        self.call: int | None = None
        self.attempts = 0
        self.resent = False  # sent again after a reset it did not cause (at most once)
        self.tried: frozenset[str] = frozenset()
        self.filter_index = 0
        self.slot: ReplySlot | None = None
        self.span: TraceSpan | None = None  # tracing on and the request sampled
        # A Redis Cluster request redirected (MOVED/ASK) or read from a replica.
        self.hop: ClusterHop | None = None
        # Where it is in its lifecycle (core/lifecycle.py): moved only by ``advance``.
        self.state = RequestState.DECODED
        # A merged message (``message.count`` > 1): answers still owed, and the ones that
        # came already (kept until the last, so the client gets them in one piece).
        self.remaining = message.count
        self.partial: list[bytes] | None = None
        # A stream's frames that came before its init frame was sent (Sender.dispatch sends
        # them right after it).
        self.early: list[Message] | None = None
        # A fan-out (docs/architecture.md): the parent holds its parts' ``split``; each part
        # is a child request with its ``parent`` and its index (``part``) among the parts.
        self.split: Split | None = None
        self.parent: ActiveRequest | None = None
        self.part = 0

    @property
    def done(self) -> bool:
        """Answered, failed or abandoned: nothing more happens to it."""
        return self.state >= _ANSWERED


class Split:
    """A request split into parts (core/fanout.py): the codec's ``merge``, the parts as child
    requests, their outcomes so far (a response ``Message`` or a ``PartFailed``, None while
    pending) and how many are still pending."""

    __slots__ = ("children", "left", "merge", "outcomes")

    def __init__(
        self,
        merge: Callable[[Sequence[Message | PartFailed]], bytes],
        children: list[ActiveRequest],
    ) -> None:
        self.merge = merge
        self.children = children
        self.outcomes: list[Message | PartFailed | None] = [None] * len(children)
        self.left = len(children)


class Downstream:
    __slots__ = (
        "active",
        "blocking",
        "buffer",
        "closed",
        "closing",
        "codec",
        "feeding",
        "gate",
        "held",
        "id",
        "idle_timer",
        "last_activity",
        "listener",
        "peer",
        "pending",
        "pinned",
        "slots",
        "streams",
        "unread",
    )

    def __init__(
        self, conn: int, listener: ListenerRuntime, codec: Codec, now: float, peer: str = ""
    ) -> None:
        self.id = conn
        self.listener = listener
        self.codec = codec
        self.peer = peer  # the client's address, for the access log
        self.buffer = bytearray()
        self.gate = ReadGate()
        # Requests waiting for their answer (a dict as an ordered set: smaller than a set).
        self.active: dict[ActiveRequest, None] = {}
        self.pending = 0  # requests in ``active``, a merged message counting as many
        # Ordered protocols: answers in request order. Made on first use and dropped when
        # empty, so an idle connection does not hold a deque's block.
        self.slots: deque[ReplySlot] | None = None
        # Bytes of answers held back for it: in slots behind an earlier unanswered request,
        # and parts of a merged message's answer. Output it has not got: output_buffer_limit.
        self.held = 0
        # Above its write high watermark only (None below it): the bytes of replies the
        # adapter holds for it, as last reported (WriteBufferGrew) plus what was written to
        # it since. An adapter reports after it flushes, and one may read several upstream
        # messages before it flushes once (uvloop reads up to megabytes a loop iteration):
        # counting the writes in between closes the client at output_buffer_limit instead
        # of one flush later.
        self.unread: int | None = None
        self.streams: dict[int, ActiveRequest] = {}  # downstream stream id -> its init request
        self.closing = False  # close once every reply is written
        self.closed = False  # gone: no longer in the engine's tables
        self.last_activity = now
        self.idle_timer: Timer | None = None
        # Ordered protocols: the upstream connection per pool this client's requests go to,
        # so its pipelined requests run in the order it sent them.
        self.pinned: dict[Pool, Upstream] = {}
        # Upstreams whose reading this client holds off while it does not read its replies.
        self.blocking: dict[Upstream, None] = {}
        # Full upstreams this client feeds, which hold off reading it (made when needed).
        self.feeding: dict[Upstream, None] | None = None

    def add_slot(self, slot: ReplySlot) -> None:
        """Take ``slot``'s place in the answer order."""
        slots = self.slots
        if slots is None:
            self.slots = deque((slot,))
        else:
            slots.append(slot)


class Upstream:
    __slots__ = (
        "blocked_by",
        "buffer",
        "closed",
        "codec",
        "connect_timer",
        "connected",
        "feeders",
        "fifo",
        "id",
        "inflight",
        "merged_extra",
        "next_id",
        "paused",
        "pool",
        "queued",
        "streams",
        "write_high",
    )

    def __init__(self, conn: int, pool: Pool, codec: Codec) -> None:
        self.id = conn
        self.pool = pool
        self.codec = codec
        self.buffer = bytearray()
        self.connected = False
        self.closed = False  # gone: no longer in the engine's tables
        self.connect_timer: Timer | None = None
        self.inflight: dict[int, ActiveRequest] = {}  # multiplexed: upstream id -> request
        self.fifo: deque[ActiveRequest] = deque()  # ordered / exclusive: in send order
        # The requests merged messages in ``fifo`` stand for beyond one each: a pipeline of
        # 1,000 commands loads a connection as 1,000 requests do, not as one.
        self.merged_extra = 0
        self.queued: list[bytes] = []  # frames written before the connection was up
        self.streams: dict[int, ActiveRequest] = {}  # upstream stream id -> init request
        self.next_id = 1
        self.write_high = False
        # Read-disabled because this upstream is full (a dict: an ordered set).
        self.feeders: dict[Downstream, None] = {}
        # Slow-reading clients with answers pending here. Reading stops (``paused``) only
        # while every client this connection serves is one of them: answers for a slow client
        # on a shared connection are buffered up to its output_buffer_limit instead.
        self.blocked_by: dict[Downstream, None] = {}
        self.paused = False

    @property
    def load(self) -> int:
        return len(self.inflight) + len(self.fifo) + self.merged_extra


class Pool:
    """Upstream connections of one listener's codec to one endpoint of one cluster."""

    __slots__ = (
        "caps",
        "cluster",
        "codec_factory",
        "codec_options",
        "connections",
        "endpoint",
        "key",
        "listener_name",
        "max_message_size",
        "ordering",
        "retired",
        "variant",
        "waiting",
    )

    def __init__(
        self,
        listener: ListenerRuntime,
        cluster: ClusterRuntime,
        endpoint: EndpointState,
        key: str,
        variant: str = "",
    ) -> None:
        self.key = key  # its name in ``endpoint.pools``
        self.variant = variant  # the kind of connection a codec asked for ("" for plain)
        self.listener_name = listener.config.name
        self.codec_factory = listener.codec_factory
        self.caps = listener.caps
        self.codec_options = listener.config.codec_options
        self.max_message_size = listener.config.max_message_size
        self.ordering = listener.codec_factory.ordering
        self.cluster = cluster  # moved to the new cluster object when a reload keeps it
        self.endpoint = endpoint
        self.connections: list[Upstream] = []
        self.waiting: deque[ActiveRequest] = deque()  # exclusive mode: waiting for a free conn
        self.retired = False

"""Merged pipelined runs (the ``DecodesMany`` codec hook: Redis), in one place
(docs/architecture.md, "Merged pipelined runs").

A listener whose codec can decode a pipelined run of requests as one merged message
(``Message.count`` of them) lets ``PipelineMerge`` decide which requests may travel
together (``MergeRun``), collect the answers to a merged message as they come
(``answer_part``), and build its final answer (``whole``) or its error reply (``error``).
The rest of the engine sees a merged message only as a request that counts as
``message.count`` requests; it asks ``PipelineMerge`` everything else.
"""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.codec import Codec, DecodesMany
from metaprotocol.core.config import RouteConfig
from metaprotocol.core.context import write
from metaprotocol.core.message import Message, NeedData, ResponseStatus
from metaprotocol.core.outputs import Output
from metaprotocol.core.routing import match_route
from metaprotocol.core.state import ActiveRequest, ClusterRuntime, ListenerRuntime, Upstream

__all__ = ["PARTIAL_FLUSH", "MergeRun", "PipelineMerge"]

_OK: Final = ResponseStatus.OK  # a module constant: no class lookup when compiled

_NO_LIMIT: Final = 2**62
# Answers to a merged message are written in one piece, unless they pass this many bytes
# while nothing before them is owed: then what came so far goes out.
PARTIAL_FLUSH: Final = 256 * 1024


class MergeRun:
    """The ``same_route(first, other)`` a codec's ``decode_many`` calls: may the request
    with properties ``other`` join the merged message that ``first`` started?

    Only if both take the same route, and only while the route's cluster has room under its
    ``max_requests`` circuit breaker, so a merged message is admitted exactly when its
    requests, sent one by one, would have been. ``PipelineMerge.begin`` sets ``routes``,
    ``clusters`` and ``first = None`` before each decode pass over a connection's buffer.
    """

    __slots__ = ("clusters", "first", "room", "route", "routes")

    def __init__(self) -> None:
        self.routes: tuple[RouteConfig, ...] = ()
        self.clusters: dict[str, ClusterRuntime] = {}
        self.first: dict[str, str] | None = None
        self.route: RouteConfig | None = None
        self.room = 0  # requests the run may still take

    def __call__(self, first: dict[str, str], other: dict[str, str]) -> bool:
        routes = self.routes
        if first is not self.first:  # a new run: route its first request
            self.first = first
            route = self.route = match_route(routes, first)
            cluster = self.clusters.get(route.action.cluster or "") if route else None
            if cluster is None:
                self.room = _NO_LIMIT  # answered with an error per request anyway
            else:
                limit = cluster.config.circuit_breakers.max_requests
                self.room = limit - cluster.active_requests - 1
        route = self.route
        if route is None or self.room <= 0 or match_route(routes, other) is not route:
            return False
        self.room -= 1
        return True


class PipelineMerge:
    """Everything the engine does differently for a merged message."""

    __slots__ = ("out", "run")

    def __init__(self, out: list[Output]) -> None:
        self.out = out
        self.run = MergeRun()

    # -- decoding ------------------------------------------------------------------------------

    def begin(self, listener: ListenerRuntime, clusters: dict[str, ClusterRuntime]) -> MergeRun:
        """A new decode pass over a buffer of ``listener``: the ``same_route`` to pass to
        the codec's ``decode_many``."""
        run = self.run
        run.routes = listener.routes
        run.clusters = clusters
        run.first = None
        return run

    @staticmethod
    def decode_answers(
        codec: Codec, buffer: bytearray, oldest: ActiveRequest
    ) -> Message | NeedData:
        """Decode the answers owed to ``oldest`` (a merged message) as one message."""
        return cast(DecodesMany, codec).decode_many(buffer, oldest.remaining)

    # -- answers ---------------------------------------------------------------------------------

    @staticmethod
    def waits_for_more(req: ActiveRequest, answer: Message) -> bool:
        """Whether ``answer`` leaves ``req`` still owed answers."""
        return req.remaining > answer.count

    @staticmethod
    def answered_in_part(req: ActiveRequest) -> bool:
        """Whether some answers of ``req`` came already (it may then not go out again)."""
        return req.partial is not None

    def answer_part(self, up: Upstream, req: ActiveRequest, msg: Message) -> bool:
        """Some of the answers ``req`` waits for: kept until the last, or written when they
        pass ``PARTIAL_FLUSH`` with nothing before them owed. True when the client's held
        answers must be checked against its limit (``Replies.over_limit``)."""
        n = msg.count
        req.remaining -= n
        if req.done:
            up.pool.cluster.counters.response_dropped += n
            return False
        counters = req.listener.counters
        counters.response += n
        if msg.status is _OK:
            counters.response_success += n
        else:
            counters.response_error += n
        ds = req.downstream
        if ds is None:
            return False
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
            data = b"".join(partial)
            ds.held -= len(data)
            self.out.append(write(ds.id, data))
            partial.clear()
            if ds.unread is None:
                return False
            ds.unread += len(data)  # it does not read its replies: count them
        return True

    @staticmethod
    def whole(req: ActiveRequest, last: bytes) -> bytes:
        """The client's answer to ``req``: the parts held so far, then ``last``."""
        partial = req.partial
        ds = req.downstream
        if not partial or ds is None:
            return last
        ds.held -= sum(len(part) for part in partial)
        return b"".join((*partial, last))

    @staticmethod
    def error(req: ActiveRequest, reply: bytes) -> bytes:
        """The error reply for ``req``: one per request still owed, after the answers that
        came before the failure."""
        owed = req.remaining
        if owed > 1:
            reply *= owed
        return PipelineMerge.whole(req, reply)

    @staticmethod
    def taken_off(up: Upstream, req: ActiveRequest) -> None:
        """``req`` left ``up``'s send order: it no longer loads it as many requests."""
        if req.message.count > 1:
            up.merged_extra -= req.message.count - 1

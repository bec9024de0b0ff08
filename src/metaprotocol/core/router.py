"""The router: a request's route, its cluster, its mirror copies (docs/architecture.md).
The route-table walk and the weighted pick themselves are pure functions in routing.py."""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.codec import SplitsRequests, codec_failure
from metaprotocol.core.context import Context
from metaprotocol.core.fanout import SplitTarget, child_request
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.message import ErrorType, MessageType, ProtocolError
from metaprotocol.core.outputs import NoRouteMatched
from metaprotocol.core.replies import Replies
from metaprotocol.core.routing import match_route, pick_cluster
from metaprotocol.core.sender import Sender
from metaprotocol.core.state import ActiveRequest, Split

__all__ = ["Router"]

# Enum members as module constants: a compiled build reads these without a class lookup.
_REQUEST: Final = MessageType.REQUEST
_ROUTED: Final = RequestState.ROUTED


class Router:
    """Routes a request (``DECODED`` or ``FILTERING``) and hands it to the ``Sender``; a
    request the codec splits (``fan_out``) is routed as its parts instead."""

    __slots__ = ("ctx", "out", "replies", "sender")

    def __init__(self, ctx: Context, replies: Replies, sender: Sender) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.replies = replies
        self.sender = sender

    def route(self, req: ActiveRequest, now: float) -> None:
        ctx = self.ctx
        if (
            req.listener.splits
            and req.parent is None
            and req.message.count == 1
            and req.message.type is _REQUEST
            and req.downstream is not None
            and self.fan_out(req, now)
        ):
            return
        route = match_route(req.listener.routes, req.message.properties)
        if route is None:
            req.listener.counters.route_not_found += 1
            if ctx.observe and req.downstream is not None:
                self.out.append(NoRouteMatched(req.downstream.id))
            self.replies.local_reply(req, ErrorType.ROUTE_NOT_FOUND, "no route matched", now)
            return
        req.route = route
        action = route.action
        name = action.cluster if action.cluster is not None else pick_cluster(action, ctx.random)
        cluster = ctx.runtime.clusters.get(name) if name is not None else None
        if cluster is None:
            detail = f"cluster {name!r} not found"
            self.replies.local_reply(req, ErrorType.CLUSTER_NOT_FOUND, detail, now)
            return
        req.cluster = cluster
        advance(req, _ROUTED)
        req.listener.route_counters[route.name].route_hit += req.message.count
        if action.mirror:
            for mirror in action.mirror:
                if mirror.fraction >= 1.0 or ctx.random() < mirror.fraction:
                    self.mirror(req, mirror.cluster, now)
        self.sender.send(req, now)

    def fan_out(self, req: ActiveRequest, now: float) -> bool:
        """Ask the codec to split ``req`` by target (``SplitsRequests``); True if it is taken
        care of here: split into parts, each routed as a request of its own (the parent waits
        in ``SPLIT`` for ``Replies.part_done``), or answered with the codec's refusal."""
        ds = req.downstream
        assert ds is not None
        codec = ds.codec
        target = SplitTarget(req.listener, self.ctx.runtime.clusters, now)
        try:
            fan = cast(SplitsRequests, codec).split(req.message, target)
        except ProtocolError as exc:  # it cannot be split (Redis MSETNX across shards)
            self.replies.local_reply(req, exc.error_type, str(exc), now)
            return True
        except Exception as bug:  # a codec bug: the request is answered, not lost
            # (its own name: mypyc gives ``exc`` the first clause's type)
            self.ctx.stats.inc("codec_error")
            failure = codec_failure(codec, "split", bug)
            self.replies.local_reply(req, failure.error_type, str(failure), now)
            return True
        if fan is None or not fan.parts:
            return False
        children = [child_request(req, part, i, now) for i, part in enumerate(fan.parts)]
        req.split = Split(fan.merge, children)
        advance(req, RequestState.SPLIT)
        req.listener.counters.request_split += 1
        for child in children:
            if req.done:  # answered already (a part's merge failed, the client went away)
                break
            self.route(child, now)
        return True

    def mirror(self, req: ActiveRequest, cluster_name: str, now: float) -> None:
        """Send a copy of ``req`` to ``cluster_name``; its answer is dropped."""
        cluster = self.ctx.runtime.clusters.get(cluster_name)
        if cluster is None or req.route is None:
            req.listener.counters.mirror_failed += 1
            return
        shadow = ActiveRequest(None, req.listener, req.message, now)
        shadow.route = req.route
        shadow.cluster = cluster
        shadow.filter_index = len(req.listener.filters)
        cluster.counters.mirror_sent += 1
        advance(shadow, _ROUTED)
        self.sender.send(shadow, now)

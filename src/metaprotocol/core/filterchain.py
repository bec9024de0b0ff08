"""Running a listener's filter chain over a request, with its pauses (a ``Delay`` timer, a
``Call`` out to the adapter) (docs/architecture.md). The verdicts and built-in filters are
in filters.py."""

from __future__ import annotations

from metaprotocol.core.context import Context
from metaprotocol.core.filters import CONTINUE, Abort, Call, Delay
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import ExternalCall, FilterFailed
from metaprotocol.core.replies import Replies
from metaprotocol.core.router import Router
from metaprotocol.core.routing import match_route
from metaprotocol.core.state import ActiveRequest

__all__ = ["FilterChain"]


class FilterChain:
    """Runs a ``FILTERING`` request through its listener's filters, then routes it."""

    __slots__ = ("ctx", "out", "replies", "router")

    def __init__(self, ctx: Context, replies: Replies, router: Router) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.replies = replies
        self.router = router

    def run(self, req: ActiveRequest, now: float) -> None:
        """Go on from the request's next filter."""
        filters = req.listener.filters
        while req.filter_index < len(filters):
            current = filters[req.filter_index]
            try:
                result = current.on_request(req.message.properties, now)
            except Exception as exc:  # a filter bug: the request is answered, never stuck
                self._failed(req, _filter_name(current), exc, now)
                return
            req.filter_index += 1
            if result is CONTINUE:
                continue
            if isinstance(result, Abort):
                self.replies.local_reply(req, result.error, result.detail, now)
                return
            if isinstance(result, Delay):
                req.pause_timer = self.ctx.timers.schedule(now + result.seconds, self._resume, req)
                return
            assert isinstance(result, Call)
            self._call(req, result, now)
            return
        self.router.route(req, now)

    def _resume(self, req: ActiveRequest, now: float) -> None:
        req.pause_timer = None
        if not req.done:
            self.run(req, now)

    def _call(self, req: ActiveRequest, call: Call, now: float) -> None:
        ctx = self.ctx
        call_id = ctx.attach_call(req, call.decide)
        req.pause_timer = ctx.timers.schedule(now + call.timeout, self._call_expired, req)
        self.out.append(ExternalCall(call_id, call.kind, call.payload))

    def _call_expired(self, req: ActiveRequest, now: float) -> None:
        req.pause_timer = None
        call_id = req.call
        if call_id is not None:
            self.call_completed(call_id, None, "timeout", now)

    def call_completed(self, call_id: int, result: object, error: str, now: float) -> None:
        """The adapter's answer to ``ExternalCall(call_id)`` (or its timeout)."""
        pending = self.ctx.detach_call(call_id)
        if pending is None:
            return  # timed out already, or the client went away
        req = pending.request
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        try:
            verdict = pending.decide(result, error)
        except Exception as exc:  # the filter's decision raised: as if the filter had
            name = _filter_name(req.listener.filters[req.filter_index - 1])
            self._failed(req, name, exc, now)
            return
        if req.done:
            return
        if verdict is not None:
            self.replies.local_reply(req, verdict.error, verdict.detail, now)
        else:
            self.run(req, now)

    def _failed(self, req: ActiveRequest, name: str, exc: Exception, now: float) -> None:
        """Answer the request with an internal error, count it, and tell the adapter (which
        logs it once) which filter raised what, on which route; never the request itself."""
        listener = req.listener
        listener.counters.filter_error += 1
        route = match_route(listener.routes, req.message.properties)
        ds = req.downstream
        conn = ds.id if ds is not None else 0
        route_name = route.name if route is not None else ""
        self.out.append(FilterFailed(conn, listener.config.name, name, route_name, exc))
        self.replies.local_reply(req, ErrorType.UNSPECIFIED, "internal error", now)


def _filter_name(current: object) -> str:
    """A filter's ``name``, read from its class the Python way: a third-party subclass sets
    it as a class attribute, which the compiled build would not see through the base class
    (only called when a filter failed, never per request)."""
    return str(getattr(type(current), "name", type(current).__name__))

"""The one place a request ends: ``RequestLifecycle.finish`` (docs/architecture.md, "The
request lifecycle")."""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.codec import ReportsReplyStatus
from metaprotocol.core.context import Context
from metaprotocol.core.lifecycle import STATE_OF_STATUS, RequestState, advance
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import RequestCompleted
from metaprotocol.core.state import ActiveRequest, Downstream
from metaprotocol.core.tables import detach_endpoint, detach_request, detach_upstream_tables

__all__ = ["RequestLifecycle"]

_ANSWERED: Final = RequestState.ANSWERED  # the first final state


class RequestLifecycle:
    """Ends requests: moves them to their final state, takes them out of every table they
    were attached to (core/tables.py), and records what they cost."""

    __slots__ = ("ctx", "observe", "out")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.observe = ctx.observe

    def finish(
        self,
        req: ActiveRequest,
        status: str,
        error: ErrorType | None,
        now: float,
        emit: bool = True,
        reply: bytes | None = None,
    ) -> RequestCompleted | None:
        """Mark ``req`` done (``status`` is ``RequestCompleted.status``; it names the final
        state through ``STATE_OF_STATUS``) and detach it from every table. Returns the
        observer event (appended to the outputs unless ``emit`` is False); ``reply`` is what
        the client gets for it, if anything."""
        if req.state >= _ANSWERED:  # done already (``req.done``, without the call)
            return None
        advance(req, STATE_OF_STATUS[status])
        split = req.split
        if split is not None:  # its parts end with it (they normally ended first)
            for child in split.children:
                if not child.done:
                    self.finish(child, "abandoned", None, now)
        pool = req.pool
        endpoint = pool.endpoint.label if pool is not None and self.observe else ""
        queue = req.deadline_queue  # its timeout: a deadline queue entry or its own timer
        if queue is not None:
            queue.discard(req)
            req.deadline_queue = None
        timer = req.timer
        if timer is not None:
            timer.cancel()
            req.timer = None
        if req.pause_timer is not None or req.call is not None:
            self.stop_waiting(req)
        if status != "oneway" and (req.upstream is not None or pool is not None):
            detach_upstream_tables(req)
        detach_endpoint(req)
        n = req.message.count
        ds = req.downstream
        if ds is not None:
            detach_request(ds, req)
        duration = now - req.start
        cluster = req.cluster
        if req.parent is not None:
            # A part of a split request: its cluster counts it; the client's request (the
            # listener's duration, the access log) is the parent, counted once.
            if cluster is not None:
                cluster.duration.observe(duration)
                cluster.outcomes[status] = cluster.outcomes.get(status, 0) + 1
            return None
        if n == 1:
            req.listener.duration.observe(duration)
            if cluster is not None:
                cluster.duration.observe(duration)
        else:
            req.listener.duration.observe_many(duration, n)
            if cluster is not None:
                cluster.duration.observe_many(duration, n)
        if cluster is not None:
            outcomes = cluster.outcomes
            outcomes[status] = outcomes.get(status, 0) + n
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
            ds.peer,
            ds.codec.name,
            self.wire_status(ds, reply),
            len(req.message.frame),
            0 if reply is None else len(reply),
            req.attempts + 1 if pool is not None else req.attempts,
            req.span,
        )
        if emit:
            self.out.append(completed)
        return completed

    def stop_waiting(self, req: ActiveRequest) -> None:
        """Forget a filter's pause (timer or external call) for a finished request."""
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        if req.call is not None:
            self.ctx.detach_call(req.call)
            req.call = None

    def wire_status(self, ds: Downstream, reply: bytes | None) -> str:
        """The status ``reply`` carries in the codec's words ("" if it cannot say)."""
        if reply is None or not ds.listener.caps.reply_status:
            return ""
        try:
            return cast(ReportsReplyStatus, ds.codec).reply_status(reply)
        except Exception:  # a codec bug: the answer went out anyway
            self.ctx.stats.inc("codec_error")
            return ""

"""Shared engine state and the ways a request ends: answers, cleanup, close, flow control.

``EngineBase`` holds the tables every part of the engine touches; ``UpstreamSide``
(upstream_side.py) and ``Proxy`` (proxy.py) build on it. Read them as one class
(docs/architecture.md describes the parts and follows one request through them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from metaprotocol.core.codec import Codec, Ordering, ReportsReplyStatus
from metaprotocol.core.flow import Reason
from metaprotocol.core.lifecycle import STATE_OF_STATUS, PendingCall, advance
from metaprotocol.core.message import ErrorType, Message, MessageType
from metaprotocol.core.outputs import (
    CloseConnection,
    LocalReplied,
    Output,
    ReadDisable,
    ReadEnable,
    RequestCompleted,
    Write,
)
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.state import ActiveRequest, Downstream, Pool, Upstream
from metaprotocol.core.stats import Stats
from metaprotocol.core.timers import DeadlineQueue, Timers

__all__ = ["EngineBase"]


class EngineBase:
    """The tables and the request-ending paths shared by both sides of the engine."""

    stats: Stats
    random: Callable[[], float]
    observe: bool
    timers: Timers
    deadline_queues: dict[float, DeadlineQueue]  # request timeouts, one queue per duration
    downstreams: dict[int, Downstream]
    upstreams: dict[int, Upstream]
    pools: dict[Pool, None]  # every pool with connections (an ordered set)
    calls: dict[int, PendingCall]  # external call id -> the paused request and its decider
    draining: bool
    now: float  # the time ``handle`` was called with: for paths that are not passed it
    _out: list[Output]

    runtime: Runtime  # the current listeners, routes and clusters

    def _decode_downstream(self, ds: Downstream, now: float) -> None:
        raise NotImplementedError

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
            n = req.message.count
            ep.active_requests -= n
            req.endpoint = None
            if req.cluster is not None:
                req.cluster.active_requests -= n
        req.pool = None

    # -- answers -----------------------------------------------------------------------------

    def _error_reply(
        self, codec: Codec, request: Message | None, error: ErrorType, detail: str
    ) -> bytes | None:
        """The codec's error reply; None (the connection then closes) if the codec has none
        or fails to build one (a bug in it, counted in ``codec_error``)."""
        try:
            return codec.encode_error(request, error, detail)
        except Exception:
            self.stats.inc("codec_error")
            return None

    def _heartbeat_reply(self, codec: Codec, heartbeat: Message) -> bytes | None:
        """The codec's answer to a heartbeat; None (nothing is sent) if it has none or fails
        to build one (a bug in it, counted in ``codec_error``)."""
        try:
            return codec.encode_heartbeat_reply(heartbeat)
        except Exception:
            self.stats.inc("codec_error")
            return None

    def _local_reply(self, req: ActiveRequest, error: ErrorType, detail: str, now: float) -> None:
        ds = req.downstream
        if ds is None or req.message.type is MessageType.ONEWAY:
            self._finish(req, "local_error", error, now)
            return
        reply = self._error_reply(ds.codec, req.message, error, detail)
        owed = req.remaining  # a merged message: one error reply per request still owed
        req.listener.counters.local_response_error += owed
        if self.observe:
            self._out.append(LocalReplied(ds.id, error, detail))
        if reply is None:
            self._finish(req, "local_error", error, now)
            if not ds.closed:
                self._close_downstream(ds, flush=True)
            return
        if owed > 1:
            reply *= owed
        partial = req.partial
        if partial:  # the answers that came before the failure go first
            ds.held -= sum(len(part) for part in partial)
            reply = b"".join((*partial, reply))
        self._answer(req, reply, "local_error", error, now)

    def _answer(
        self,
        req: ActiveRequest,
        data: bytes,
        status: str,
        error: ErrorType | None,
        now: float,
    ) -> None:
        """Hand ``data`` to the request's client, in order for ordered protocols; the client
        connection closes after it when the request asked for that (``connection: close``)."""
        ds = req.downstream
        completed = self._finish(req, status, error, now, emit=False, reply=data)
        if ds is None or ds.closed:
            return
        slot = req.slot
        if slot is not None:
            slot.data = data
            ds.held += len(data)
            if req.message.properties.get("connection") == "close":
                slot.close_after = True
            self._flush_slots(ds)
            if ds.slots and self._held_too_much(ds):
                return
        else:
            self._out.append(Write(ds.id, data))
        if completed is not None:
            self._out.append(completed)
        if not ds.gate.reasons and not ds.closing:
            return  # the common case: nothing held back, nothing to close
        if ds.closed:
            return
        pending_limit = ds.listener.config.max_pending_requests
        if Reason.TOO_MANY_PENDING in ds.gate.reasons and ds.pending < pending_limit:
            self._enable(ds, Reason.TOO_MANY_PENDING)
            self._decode_downstream(ds, now)
        self._maybe_finish_close(ds)

    def _flush_slots(self, ds: Downstream) -> None:
        slots = ds.slots
        if slots is None:
            return
        chunks: list[bytes] = []
        close = False
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            chunks.append(slot.data)  # type: ignore[arg-type]
            ds.held -= len(slot.data)  # type: ignore[arg-type]
            if slot.close_after:
                close = True
                break
        if not slots:
            ds.slots = None
        if chunks:
            self._out.append(Write(ds.id, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
        if close:
            self._close_downstream(ds, flush=True)

    def _held_too_much(self, ds: Downstream) -> bool:
        """Close ``ds`` if the answers held back for it pass its output_buffer_limit (as
        unread replies in the adapter's buffer do); True if it was closed."""
        if ds.held <= ds.listener.config.output_buffer_limit:
            return False
        ds.listener.counters.downstream_cx_output_overflow += 1
        self._close_downstream(ds, flush=False)
        return True

    def _finish(
        self,
        req: ActiveRequest,
        status: str,
        error: ErrorType | None,
        now: float,
        emit: bool = True,
        reply: bytes | None = None,
    ) -> RequestCompleted | None:
        """Mark ``req`` done and remove every trace of it from the tables. Returns the
        observer event (appended to the outputs unless ``emit`` is False); ``reply`` is what
        the client gets for it, if anything."""
        if req.done:
            return None
        advance(req, STATE_OF_STATUS[status])
        pool = req.pool
        endpoint = pool.endpoint.label if pool is not None and self.observe else ""
        queue = req.deadline_queue
        if queue is not None:
            queue.discard(req)
            req.deadline_queue = None
        timer = req.timer
        if timer is not None:
            timer.cancel()
            req.timer = None
        if req.pause_timer is not None or req.call is not None:
            self._stop_waiting(req)
        if status != "oneway" and (req.upstream is not None or pool is not None):
            self._release_upstream(req)
        self._unclaim(req)
        n = req.message.count
        ds = req.downstream
        if ds is not None and req in ds.active:
            active = ds.active
            del active[req]
            if not active:
                # Nothing in flight: free the tables' storage (idle connections stay small),
                # and no pipeline order left to keep, so the next request may go anywhere.
                active.clear()
                if ds.pinned:
                    ds.pinned.clear()
            ds.pending -= n
            req.listener.counters.active_requests -= n
            if ds.streams:
                mid = req.message.request_id
                if mid is not None and ds.streams.get(mid) is req:
                    del ds.streams[mid]
        duration = now - req.start
        cluster = req.cluster
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
            self._wire_status(ds, reply),
            len(req.message.frame),
            0 if reply is None else len(reply),
            req.attempts + 1 if pool is not None else req.attempts,
            req.span,
        )
        if emit:
            self._out.append(completed)
        return completed

    def _wire_status(self, ds: Downstream, reply: bytes | None) -> str:
        """The status ``reply`` carries in the codec's words ("" if it cannot say)."""
        if reply is None or not ds.listener.caps.reply_status:
            return ""
        try:
            return cast(ReportsReplyStatus, ds.codec).reply_status(reply)
        except Exception:  # a codec bug: the answer went out anyway
            self.stats.inc("codec_error")
            return ""

    def _stop_waiting(self, req: ActiveRequest) -> None:
        """Forget a filter's pause (timer or external call) for a finished request."""
        if req.pause_timer is not None:
            req.pause_timer.cancel()
            req.pause_timer = None
        if req.call is not None:
            self.calls.pop(req.call, None)
            req.call = None

    def _maybe_finish_close(self, ds: Downstream) -> None:
        if ds.closing and not ds.active and not ds.slots and not ds.closed:
            self._close_downstream(ds, flush=True)

    def _close_downstream(self, ds: Downstream, flush: bool) -> None:
        if ds.closed:
            return
        if ds.active:
            ds.listener.counters.cx_destroy_local_with_active_rq += 1
        self._out.append(CloseConnection(ds.id, flush=flush))
        self._drop_downstream(ds, None)

    def _drop_downstream(self, ds: Downstream, now: float | None) -> None:
        """Forget a downstream connection and everything it owned upstream."""
        ds.closed = True
        del self.downstreams[ds.id]
        ds.listener.counters.downstream_cx_active -= 1
        if ds.idle_timer is not None:
            ds.idle_timer.cancel()
        owed: list[tuple[Upstream, ActiveRequest, float | None]] = []
        for req in list(ds.active):
            up = req.upstream
            queue = req.deadline_queue
            deadline = queue.entries.get(req) if queue is not None else None
            self._finish(req, "abandoned", None, now if now is not None else req.start)
            if up is not None and up.pool.ordering is not Ordering.MULTIPLEXED:
                owed.append((up, req, deadline))
        # Once every request of this client is finished: what else waits on those
        # connections is then other clients' requests only.
        for up, req, deadline in owed:
            if not up.closed:
                self._abandoned_on(up, req, deadline)
        ds.slots = None
        ds.streams.clear()
        ds.buffer.clear()
        ds.pinned.clear()
        self._unblock_upstreams(ds)
        if ds.feeding is not None:
            for up in ds.feeding:
                up.feeders.pop(ds, None)
            ds.feeding = None

    def _abandoned_on(self, up: Upstream, req: ActiveRequest, deadline: float | None) -> None:
        raise NotImplementedError

    def _unblock_upstreams(self, ds: Downstream) -> None:
        """``ds`` reads its replies again (or is gone): resume the upstreams it held off,
        unless only other slow readers remain on them."""
        for up in ds.blocking:
            up.blocked_by.pop(ds, None)
            if up.paused and not up.closed and not self._serves_only_slow(up):
                self._resume_upstream(up)
        ds.blocking.clear()

    def _pause_if_only_slow(self, up: Upstream) -> None:
        """Stop reading ``up`` when every client it still owes an answer is a slow reader:
        then nobody else waits behind them, and the upstream server, not this process, holds
        their answers."""
        if not up.paused and not up.closed and self._serves_only_slow(up):
            up.paused = True
            up.pool.cluster.counters.upstream_flow_control_paused += 1
            self._out.append(ReadDisable(up.id))

    def _serves_only_slow(self, up: Upstream) -> bool:
        """Whether every unanswered request on ``up`` is for a client in ``up.blocked_by``."""
        slow = up.blocked_by
        if not slow:
            return False
        for requests in (up.inflight.values(), up.fifo, up.streams.values()):
            for req in requests:
                if not req.done and req.downstream not in slow:
                    return False
        return True

    def _resume_upstream(self, up: Upstream) -> None:
        """Read ``up`` again: a client that reads its replies waits for an answer from it."""
        up.paused = False
        self._out.append(ReadEnable(up.id))

    # -- flow control ------------------------------------------------------------------------

    def _hold_feeder(self, up: Upstream, ds: Downstream) -> None:
        """``up`` is above its write high watermark: stop reading ``ds``, which feeds it."""
        up.feeders[ds] = None
        if ds.feeding is None:
            ds.feeding = {up: None}
        else:
            ds.feeding[up] = None
        self._disable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def _release_feeders(self, up: Upstream) -> None:
        """``up`` drained (or is gone): read its feeders again, unless another full upstream
        still holds one back."""
        feeders = list(up.feeders)
        up.feeders.clear()
        for ds in feeders:
            feeding = ds.feeding
            if feeding is not None:
                feeding.pop(up, None)
                if feeding:
                    continue
                ds.feeding = None
            self._enable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def _disable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.disable(reason):
            self._out.append(ReadDisable(ds.id))

    def _enable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.enable(reason) and not ds.closed:
            self._out.append(ReadEnable(ds.id))

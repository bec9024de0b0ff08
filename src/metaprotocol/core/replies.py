"""The client side of a request's end: its answer (in reply order for ordered protocols),
the proxy's own error replies, and closing client connections (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable

from metaprotocol.core.codec import Codec, Ordering, PartFailed
from metaprotocol.core.context import Context, write
from metaprotocol.core.fanout import merged_status
from metaprotocol.core.flow import FlowControl, Reason
from metaprotocol.core.merging import PipelineMerge
from metaprotocol.core.message import ErrorType, Message, MessageType
from metaprotocol.core.outputs import CloseConnection, LocalReplied
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.state import ActiveRequest, Downstream, ReplySlot, Upstream

__all__ = ["Abandon", "Replies"]

# What the upstream side does for a request whose client went away while an ordered
# upstream connection still owes its answer: (connection, request, its deadline or None).
Abandon = Callable[[Upstream, ActiveRequest, float | None], None]


def _ignore_resume(ds: Downstream, now: float) -> None:
    pass


def _ignore_abandon(up: Upstream, req: ActiveRequest, deadline: float | None) -> None:
    pass


class Replies:
    """Answers to clients and the end of client connections.

    Two edges point up the graph, as callbacks the facade wires (core/proxy.py):
    ``resume_reading`` (a client below ``max_pending_requests`` again: decode what it sent,
    ``Downstreams.decode``) and ``abandon`` (``UpstreamSide.abandoned_on``)."""

    __slots__ = ("abandon", "ctx", "flow", "lifecycle", "observe", "out", "resume_reading")

    def __init__(self, ctx: Context, lifecycle: RequestLifecycle, flow: FlowControl) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.observe = ctx.observe
        self.lifecycle = lifecycle
        self.flow = flow
        self.resume_reading: Callable[[Downstream, float], None] = _ignore_resume
        self.abandon: Abandon = _ignore_abandon

    # -- what codecs build for the proxy -----------------------------------------------------

    def error_reply(
        self, codec: Codec, request: Message | None, error: ErrorType, detail: str
    ) -> bytes | None:
        """The codec's error reply; None (the connection then closes) if the codec has none
        or fails to build one (a bug in it, counted in ``codec_error``)."""
        try:
            return codec.encode_error(request, error, detail)
        except Exception:
            self.ctx.stats.inc("codec_error")
            return None

    def heartbeat_reply(self, codec: Codec, heartbeat: Message) -> bytes | None:
        """The codec's answer to a heartbeat; None (nothing is sent) if it has none or fails
        to build one (a bug in it, counted in ``codec_error``)."""
        try:
            return codec.encode_heartbeat_reply(heartbeat)
        except Exception:
            self.ctx.stats.inc("codec_error")
            return None

    # -- answers -----------------------------------------------------------------------------

    def local_reply(self, req: ActiveRequest, error: ErrorType, detail: str, now: float) -> None:
        """Answer ``req`` with the codec's error reply (and finish it); a part of a split
        request has failed instead (``part_done``)."""
        if req.parent is not None:
            self.part_done(req, PartFailed(error, detail), "local_error", error, now)
            return
        ds = req.downstream
        if ds is None or req.message.type is MessageType.ONEWAY:
            self.lifecycle.finish(req, "local_error", error, now)
            return
        reply = self.error_reply(ds.codec, req.message, error, detail)
        # A merged message: one error reply per request still owed (PipelineMerge.error).
        req.listener.counters.local_response_error += req.remaining
        if self.observe:
            self.out.append(LocalReplied(ds.id, error, detail))
        if reply is None:
            self.lifecycle.finish(req, "local_error", error, now)
            if not ds.closed:
                self.close(ds, flush=True)
            return
        self.answer(req, PipelineMerge.error(req, reply), "local_error", error, now)

    def answer(
        self,
        req: ActiveRequest,
        data: bytes,
        status: str,
        error: ErrorType | None,
        now: float,
    ) -> None:
        """Finish ``req`` and hand ``data`` to its client, in order for ordered protocols; the
        client connection closes after it when the request asked for that."""
        ds = req.downstream
        completed = self.lifecycle.finish(req, status, error, now, emit=False, reply=data)
        if ds is None or ds.closed:
            return
        slot = req.slot
        if slot is not None:
            slot.data = data
            ds.held += len(data)
            if req.message.properties.get("connection") == "close":
                slot.close_after = True
            self.flush_slots(ds)
            if (ds.slots or ds.unread is not None) and self.over_limit(ds):
                return
        else:
            self.out.append(write(ds.id, data))
            if ds.unread is not None:  # it does not read its replies: count this one
                ds.unread += len(data)
                if self.over_limit(ds):
                    return
        if completed is not None:
            self.out.append(completed)
        if not ds.gate.reasons and not ds.closing:
            return  # the common case: nothing held back, nothing to close
        if ds.closed:
            return
        pending_limit = ds.listener.config.max_pending_requests
        if Reason.TOO_MANY_PENDING in ds.gate.reasons and ds.pending < pending_limit:
            self.flow.enable(ds, Reason.TOO_MANY_PENDING)
            self.resume_reading(ds, now)
        self.maybe_finish_close(ds)

    def part_done(
        self,
        child: ActiveRequest,
        outcome: Message | PartFailed,
        status: str,
        error: ErrorType | None,
        now: float,
    ) -> None:
        """A part of a split request has its outcome (its response, or ``PartFailed``): it
        ends, and when it is its parent's last, the codec's ``merge`` of all the outcomes is
        the parent's answer, written in the parent's place in the reply order."""
        parent = child.parent
        assert parent is not None
        self.lifecycle.finish(child, status, error, now)
        split = parent.split
        if split is None or parent.done:
            return  # the client went away: the parent and its parts are abandoned
        split.outcomes[child.part] = outcome
        split.left -= 1
        if split.left:
            return
        outcomes = [o for o in split.outcomes if o is not None]
        try:
            data = split.merge(outcomes)
        except Exception:  # a codec bug: the client still gets its one answer
            self.ctx.stats.inc("codec_error")
            self.local_reply(parent, ErrorType.UNSPECIFIED, "codec failed to merge", now)
            return
        merged, merged_error = merged_status(outcomes)
        # The client's request got one answer: counted once, however many parts it had.
        counters = parent.listener.counters
        if merged == "local_error":
            counters.local_response_error += 1
        else:
            counters.response += 1
            if merged == "ok":
                counters.response_success += 1
            else:
                counters.response_error += 1
        self.answer(parent, data, merged, merged_error, now)

    def ordered_reply(self, ds: Downstream, reply: bytes, close_after: bool = False) -> None:
        """A reply to something that is not a request (a heartbeat, a refused frame): on an
        ordered protocol behind the answers to earlier requests, else at once."""
        if ds.listener.ordered:
            slot = ReplySlot()
            slot.data = reply
            slot.close_after = close_after
            ds.held += len(reply)
            ds.add_slot(slot)
            self.flush_slots(ds)
        else:
            self.out.append(write(ds.id, reply))
            if ds.unread is not None:
                ds.unread += len(reply)

    def flush_slots(self, ds: Downstream) -> None:
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
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.out.append(write(ds.id, data))
            if ds.unread is not None:
                ds.unread += len(data)
        if close:
            self.close(ds, flush=True)

    def over_limit(self, ds: Downstream) -> bool:
        """Close ``ds`` if its output it has not got (the answers held back for it, and
        above its write high watermark the replies in the adapter's buffer) passes its
        output_buffer_limit, as Redis's client-output-buffer-limit does; True if closed."""
        unread = ds.held if ds.unread is None else ds.held + ds.unread
        if unread <= ds.listener.config.output_buffer_limit:
            return False
        ds.listener.counters.downstream_cx_output_overflow += 1
        self.close(ds, flush=False)
        return True

    # -- the end of a client connection ------------------------------------------------------

    def maybe_finish_close(self, ds: Downstream) -> None:
        if ds.closing and not ds.active and not ds.slots and not ds.closed:
            self.close(ds, flush=True)

    def close(self, ds: Downstream, flush: bool) -> None:
        """Close ``ds`` from this side (after writing what it was given, with ``flush``)."""
        if ds.closed:
            return
        if ds.active:
            ds.listener.counters.cx_destroy_local_with_active_rq += 1
        self.out.append(CloseConnection(ds.id, flush=flush))
        self.drop(ds, None)

    def drop(self, ds: Downstream, now: float | None) -> None:
        """Forget a client connection and everything it owned upstream."""
        self.ctx.detach_downstream(ds)
        if ds.idle_timer is not None:
            ds.idle_timer.cancel()
        owed: list[tuple[Upstream, ActiveRequest, float | None]] = []
        finish = self.lifecycle.finish
        for request in list(ds.active):
            split = request.split
            # A split request's parts go with it (they are in no table of the client's).
            live = [request] if split is None else [*split.children, request]
            for req in live:
                if req.done:
                    continue
                up = req.upstream
                queue = req.deadline_queue
                deadline = queue.entries.get(req) if queue is not None else None
                finish(req, "abandoned", None, now if now is not None else req.start)
                if up is not None and up.pool.ordering is not Ordering.MULTIPLEXED:
                    owed.append((up, req, deadline))
        # Once every request of this client is finished: what else waits on those
        # connections is then other clients' requests only.
        for up, req, deadline in owed:
            if not up.closed:
                self.abandon(up, req, deadline)
        ds.slots = None
        ds.streams.clear()
        ds.buffer.clear()
        ds.pinned.clear()
        self.flow.unblock_upstreams(ds)
        self.flow.forget_feeder(ds)

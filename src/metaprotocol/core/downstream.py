"""Client connections: accepting them, the decode loop, what each decoded message becomes
(a request, a heartbeat answered, a stream frame passed on), and their end
(docs/architecture.md)."""

from __future__ import annotations

from typing import Final, cast

from metaprotocol.core.codec import DecodesMany, SendsInterimReply, Side, codec_failure
from metaprotocol.core.context import Context, write
from metaprotocol.core.filterchain import FilterChain
from metaprotocol.core.flow import FlowControl, Reason
from metaprotocol.core.lifecycle import RequestState, advance
from metaprotocol.core.merging import MergeRun, PipelineMerge
from metaprotocol.core.message import (
    NEED_DATA,
    AuthenticationFailed,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    Decoded,
    LocalReplied,
    RequestCompleted,
)
from metaprotocol.core.replies import Replies
from metaprotocol.core.requests import RequestLifecycle
from metaprotocol.core.router import Router
from metaprotocol.core.state import ActiveRequest, Downstream, ListenerRuntime
from metaprotocol.core.tables import attach_request
from metaprotocol.core.tracing import start_span

__all__ = ["Downstreams"]

_REQUEST: Final = MessageType.REQUEST
_ONEWAY: Final = MessageType.ONEWAY
_STREAM_INIT: Final = MessageType.STREAM_INIT


class Downstreams:
    """The client side of the engine, from ``Accepted`` and ``DataReceived`` to a request
    handed to the filter chain or the router."""

    __slots__ = (
        "chain",
        "ctx",
        "flow",
        "lifecycle",
        "merge",
        "observe",
        "out",
        "replies",
        "router",
    )

    def __init__(
        self,
        ctx: Context,
        lifecycle: RequestLifecycle,
        replies: Replies,
        flow: FlowControl,
        chain: FilterChain,
        router: Router,
        merge: PipelineMerge,
    ) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.observe = ctx.observe
        self.lifecycle = lifecycle
        self.replies = replies
        self.flow = flow
        self.chain = chain
        self.router = router
        self.merge = merge

    def accepted(self, conn: int, listener_name: str, peer: str, now: float) -> None:
        listener = self.ctx.runtime.listeners.get(listener_name)
        if listener is None or self.ctx.draining:
            self.out.append(CloseConnection(conn, flush=False))
            return
        lc = listener.config
        codec = listener.codec_factory(Side.DOWNSTREAM, lc.codec_options, lc.max_message_size)
        ds = Downstream(conn, listener, codec, now, peer)
        self.ctx.attach_downstream(ds)
        if lc.idle_timeout:
            ds.idle_timer = self.ctx.timers.schedule(now + lc.idle_timeout, self._idle_check, ds)

    def _idle_check(self, ds: Downstream, now: float) -> None:
        if ds.closed:
            return
        timeout = ds.listener.config.idle_timeout or 0.0
        due = ds.last_activity + timeout
        if ds.active:
            ds.idle_timer = self.ctx.timers.schedule(now + timeout, self._idle_check, ds)
        elif due > now:
            ds.idle_timer = self.ctx.timers.schedule(due, self._idle_check, ds)
        else:
            ds.listener.counters.idle_timeout += 1
            self.replies.close(ds, flush=True)

    def decode(self, ds: Downstream, now: float) -> None:
        codec = ds.codec
        buffer = ds.buffer
        listener = ds.listener
        lc = listener.config
        # Pipelined requests taking the same route may be merged into one message (fewer
        # objects, one upstream write); not while observers want to see each request.
        many = None
        run: MergeRun | None = None
        observe = self.observe
        before = 0  # the buffer's size before a decode (observed only: for the access log)
        if listener.batchable and not observe:
            many = cast(DecodesMany, codec).decode_many
            run = self.merge.begin(listener, self.ctx.runtime.clusters)
        gate = ds.gate
        while buffer and not ds.closing:
            if gate.reasons and Reason.OWN_WRITE_BUFFER_HIGH in gate.reasons:
                return  # it does not read its replies: no new requests until it does
            room = lc.max_pending_requests - ds.pending
            if room <= 0:
                self.flow.disable(ds, Reason.TOO_MANY_PENDING)
                return
            if observe:
                before = len(buffer)
            try:
                msg = codec.decode(buffer) if many is None else many(buffer, room, run)
            except ProtocolError as exc:
                self._decode_failed(ds, exc, now, before)
                continue
            except Exception as bug:  # a codec bug: answered and closed, never stuck
                # (its own name: mypyc gives ``exc`` the first clause's type)
                self.ctx.stats.inc("codec_error")
                failure = codec_failure(codec, "decode", bug)
                self._decode_failed(ds, failure, now, before)
                continue
            if msg is NEED_DATA:
                if listener.caps.interim_reply:
                    try:
                        early = cast(SendsInterimReply, codec).interim_reply()
                    except Exception:  # a codec bug: the early reply is optional anyway
                        self.ctx.stats.inc("codec_error")
                        early = None
                    if early:
                        self.out.append(write(ds.id, early))
                if len(buffer) > lc.max_message_size:
                    too_large = ProtocolError("message too large", ErrorType.MESSAGE_TOO_LARGE)
                    self._decode_failed(ds, too_large, now, len(buffer))
                return
            self._on_request(ds, msg, now)

    def _decode_failed(
        self, ds: Downstream, exc: ProtocolError, now: float, before: int = 0
    ) -> None:
        """Answer what the codec refused or could not read. ``before``: the receive buffer's
        size before the failed decode (what the codec consumed of it is the request's size;
        a fatal error discards all of it)."""
        ds.listener.counters.request_decoding_error += 1
        if isinstance(exc, AuthenticationFailed):
            ds.listener.counters.downstream_auth_failed += 1
        reply = self.replies.error_reply(ds.codec, exc.request, exc.error_type, str(exc))
        fatal = exc.fatal or reply is None
        received = before if fatal else max(before - len(ds.buffer), 0)
        if fatal:
            ds.buffer.clear()
            ds.closing = True  # nothing more is read; close once the replies are written
        if reply is not None:
            ds.listener.counters.local_response_error += 1
            if self.observe:
                self.out.append(LocalReplied(ds.id, exc.error_type, str(exc)))
                self.out.append(self._refused(ds, exc.error_type, reply, now, received))
            self.replies.ordered_reply(ds, reply, close_after=fatal)
        if fatal:
            self.replies.maybe_finish_close(ds)
            if not ds.closed:  # earlier answers are still on their way
                self.flow.disable(ds, Reason.CLOSING)

    def _refused(
        self, ds: Downstream, error: ErrorType, reply: bytes, now: float, received: int
    ) -> RequestCompleted:
        """The access log's line for a request answered before it became one (the codec
        refused or could not decode it): no route, no upstream, no time spent."""
        return RequestCompleted(
            ds.id,
            ds.listener.config.name,
            "",
            "",
            "",
            "local_error",
            error,
            0.0,
            {},
            ds.peer,
            ds.codec.name,
            self.lifecycle.wire_status(ds, reply),
            received,
            len(reply),
        )

    def _on_request(self, ds: Downstream, msg: Message, now: float) -> None:
        mtype = msg.type
        listener = ds.listener
        if mtype is _REQUEST or mtype is _ONEWAY or mtype is _STREAM_INIT:
            self._new_request(ds, listener, msg, mtype, now)
            return
        counters = listener.counters
        if mtype is MessageType.HEARTBEAT:
            counters.heartbeat += 1
            reply = self.replies.heartbeat_reply(ds.codec, msg)
            if reply is None:
                return
            self.replies.ordered_reply(ds, reply)  # behind earlier requests' answers
            return
        if mtype is MessageType.STREAM_DATA or mtype is MessageType.STREAM_CLOSE:
            self._stream_frame(ds, msg, now)
            return
        self._decode_failed(ds, ProtocolError(f"unexpected {mtype.value} from client"), now)

    def _new_request(
        self,
        ds: Downstream,
        listener: ListenerRuntime,
        msg: Message,
        mtype: MessageType,
        now: float,
    ) -> None:
        counters = listener.counters
        n = msg.count
        counters.request += n
        counters.request_decoding_success += n
        if n > 1:
            counters.request_merged += n
        if self.observe:
            self.out.append(Decoded(ds.id, msg.request_id, mtype.value, msg.properties))
        req = ActiveRequest(ds, listener, msg, now)
        tracing = self.ctx.tracing
        if tracing is not None:
            req.span = start_span(msg.properties, tracing.sampling, self.ctx.random)
        if mtype is _ONEWAY:
            counters.request_oneway += n
        else:
            counters.request_twoway += n
            attach_request(ds, req)
        if listener.filters:
            advance(req, RequestState.FILTERING)
            self.chain.run(req, now)
        else:
            self.router.route(req, now)

    # -- streams -----------------------------------------------------------------------------

    def _stream_frame(self, ds: Downstream, msg: Message, now: float) -> None:
        """Data / close frames follow their stream's init frame to the same upstream."""
        sid = msg.request_id
        init = ds.streams.get(sid) if sid is not None else None
        if init is not None and init.upstream is None and not init.done:
            # Its init frame is not sent yet (a filter holds it, or it waits for a
            # connection): the frame follows it when it goes (Sender.dispatch).
            self._hold_frame(ds, init, msg, now)
            return
        if init is None or init.upstream is None or init.upstream_id is None:
            if msg.type is MessageType.STREAM_CLOSE:
                return  # the stream already ended (the server closed it first): nothing to do
            self._decode_failed(ds, ProtocolError("frame for unknown stream", fatal=False), now)
            return
        up = init.upstream
        new_id = init.upstream_id if init.upstream_id != sid else None
        data = up.codec.encode(msg, request_id=new_id)
        if up.connected:
            self.out.append(write(up.id, data))
        else:
            up.queued.append(data)
        if msg.type is MessageType.STREAM_CLOSE and msg.status is ResponseStatus.ERROR:
            # A reset from the client ends the stream both ways: the server answers nothing
            # more for it, so its state goes now rather than at the request timeout.
            self.lifecycle.finish(init, "reset", None, now)

    def _hold_frame(self, ds: Downstream, init: ActiveRequest, msg: Message, now: float) -> None:
        """Keep a stream frame until its init frame is sent (at most max_message_size of
        them: a client may not make the proxy hold more for a stream that is not open)."""
        if msg.type is MessageType.STREAM_CLOSE and msg.status is ResponseStatus.ERROR:
            # A reset from the client before the stream went anywhere: nothing to send.
            self.lifecycle.finish(init, "reset", None, now)
            return
        early = init.early
        if early is None:
            early = init.early = []
        held = sum(len(frame.frame) for frame in early) + len(msg.frame)
        if held > ds.listener.config.max_message_size:
            refused = ProtocolError(
                "too much stream data before the stream was opened",
                ErrorType.MESSAGE_TOO_LARGE,
                fatal=False,
            )
            self._decode_failed(ds, refused, now)
            return
        early.append(msg)

    def ended(self, ds: Downstream, eof: bool, now: float) -> None:
        """The client closed (``eof``: half-closed, we close our side) or is gone."""
        # End of stream from a client means it is gone (as nginx assumes by default):
        # what it still waits for is abandoned, and nothing is kept for it upstream.
        if ds.active:
            ds.listener.counters.cx_destroy_remote_with_active_rq += 1
        self.replies.drop(ds, now)
        if eof:
            self.out.append(CloseConnection(ds.id, flush=True))

    def write_buffer_grew(self, ds: Downstream, size: int) -> None:
        # A client this far behind is closed rather than let its unread replies grow
        # without bound (Replies.over_limit).
        ds.unread = size
        self.replies.over_limit(ds)

    def write_buffer_low(self, ds: Downstream, now: float) -> None:
        ds.unread = None
        self.flow.enable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
        self.flow.unblock_upstreams(ds)
        if ds.buffer and not ds.closing:  # requests that arrived before it filled up
            self.decode(ds, now)

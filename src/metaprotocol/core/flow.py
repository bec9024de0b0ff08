"""Flow control: the reasons a connection is not read (``ReadGate``: ReadDisable on 0 -> 1
reasons, ReadEnable on 1 -> 0) and ``FlowControl``, which keeps them (docs/architecture.md)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from metaprotocol.core.outputs import Output, ReadDisable, ReadEnable

if TYPE_CHECKING:
    from metaprotocol.core.state import Downstream, Upstream

__all__ = ["FlowControl", "ReadGate", "Reason", "serves_only_slow"]


class Reason(enum.Enum):
    UPSTREAM_WRITE_BUFFER_HIGH = "upstream_write_buffer_high"  # an upstream this conn feeds is full
    OWN_WRITE_BUFFER_HIGH = "own_write_buffer_high"  # this conn does not read its replies
    TOO_MANY_PENDING = "too_many_pending"  # max_pending_requests reached on this conn
    CLOSING = "closing"  # a fatal protocol error: only flushing is left


_NONE: frozenset[Reason] = frozenset()


class ReadGate:
    """The set of reasons a connection is not being read. Each reason counts once.

    The set is an immutable one replaced on change: a readable connection (nearly all of
    them) shares the empty frozenset instead of holding an empty set of its own.
    """

    __slots__ = ("reasons",)

    def __init__(self) -> None:
        self.reasons: frozenset[Reason] = _NONE

    def disable(self, reason: Reason) -> bool:
        """Add a reason; True when the connection just went from readable to disabled."""
        was_empty = not self.reasons
        if reason not in self.reasons:
            self.reasons = self.reasons | {reason}
        return was_empty

    def enable(self, reason: Reason) -> bool:
        """Drop a reason; True when the last reason went away."""
        if reason not in self.reasons:
            return False
        self.reasons = self.reasons - {reason}
        if not self.reasons:
            self.reasons = _NONE
        return not self.reasons


class FlowControl:
    """Who is read and who is not: the read gates of client connections and their reasons,
    the full upstreams that hold their feeders off, and the upstreams paused because they
    serve only clients that do not read their replies (docs/architecture.md)."""

    __slots__ = ("out",)

    def __init__(self, out: list[Output]) -> None:
        self.out = out

    def disable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.disable(reason):
            self.out.append(ReadDisable(ds.id))

    def enable(self, ds: Downstream, reason: Reason) -> None:
        if ds.gate.enable(reason) and not ds.closed:
            self.out.append(ReadEnable(ds.id))

    # -- full upstreams hold off the clients that feed them -----------------------------------

    def hold_feeder(self, up: Upstream, ds: Downstream) -> None:
        """``up`` is above its write high watermark: stop reading ``ds``, which feeds it."""
        up.feeders[ds] = None
        if ds.feeding is None:
            ds.feeding = {up: None}
        else:
            ds.feeding[up] = None
        self.disable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def release_feeders(self, up: Upstream) -> None:
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
            self.enable(ds, Reason.UPSTREAM_WRITE_BUFFER_HIGH)

    def forget_feeder(self, ds: Downstream) -> None:
        """``ds`` is gone: no full upstream holds it off any more."""
        if ds.feeding is not None:
            for up in ds.feeding:
                up.feeders.pop(ds, None)
            ds.feeding = None

    def upstream_full(self, up: Upstream) -> None:
        """``up`` passed its write high watermark: hold off every client it carries requests
        for."""
        if up.write_high:
            return
        up.write_high = True
        for req in (*up.inflight.values(), *up.fifo):
            ds = req.downstream
            if ds is not None and not req.done and not ds.closed:
                self.hold_feeder(up, ds)

    def upstream_drained(self, up: Upstream) -> None:
        if up.write_high:
            up.write_high = False
            self.release_feeders(up)

    # -- slow readers ------------------------------------------------------------------------

    def slow_reader(self, ds: Downstream) -> None:
        """``ds`` does not read its replies: stop decoding its requests. The upstreams that
        owe it answers stop being read only if it is all they serve; a shared one goes on,
        and this client's answers wait in its own output buffer (up to output_buffer_limit)
        instead of stalling the others."""
        self.disable(ds, Reason.OWN_WRITE_BUFFER_HIGH)
        if ds.unread is None:
            ds.unread = 0  # what it is written from now on counts (Downstream.unread)
        for req in ds.active:
            held = req.upstream
            if held is None or ds in held.blocked_by:
                continue
            held.blocked_by[ds] = None
            ds.blocking[held] = None
            self.pause_if_only_slow(held)

    def unblock_upstreams(self, ds: Downstream) -> None:
        """``ds`` reads its replies again (or is gone): resume the upstreams it held off,
        unless only other slow readers remain on them."""
        for up in ds.blocking:
            up.blocked_by.pop(ds, None)
            if up.paused and not up.closed and not serves_only_slow(up):
                self.resume_upstream(up)
        ds.blocking.clear()

    def forget_upstream(self, up: Upstream) -> None:
        """``up`` is gone: its feeders are read again, its slow readers forget it."""
        self.release_feeders(up)
        for ds in up.blocked_by:
            ds.blocking.pop(up, None)
        up.blocked_by.clear()

    def pause_if_only_slow(self, up: Upstream) -> None:
        """Stop reading ``up`` when every client it still owes an answer is a slow reader:
        then nobody else waits behind them, and the upstream server, not this process, holds
        their answers."""
        if not up.paused and not up.closed and serves_only_slow(up):
            up.paused = True
            up.pool.cluster.counters.upstream_flow_control_paused += 1
            self.out.append(ReadDisable(up.id))

    def resume_upstream(self, up: Upstream) -> None:
        """Read ``up`` again: a client that reads its replies waits for an answer from it."""
        up.paused = False
        self.out.append(ReadEnable(up.id))


def serves_only_slow(up: Upstream) -> bool:
    """Whether every unanswered request on ``up`` is for a client in ``up.blocked_by``."""
    slow = up.blocked_by
    if not slow:
        return False
    for requests in (up.inflight.values(), up.fifo, up.streams.values()):
        for req in requests:
            if not req.done and req.downstream not in slow:
                return False
    return True

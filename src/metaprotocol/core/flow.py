"""Read-disable reasons counted per connection: emit ReadDisable on 0 -> 1, ReadEnable on 1 -> 0."""

from __future__ import annotations

import enum

__all__ = ["ReadGate", "Reason"]


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

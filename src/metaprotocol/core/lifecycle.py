"""A request's lifecycle as data: its states, the transitions allowed between them, and the
one function that moves a request from one state to the next (docs/architecture.md).

Rules
-----
- A request is created ``DECODED`` (a mirror copy too: it is routed at once).
- ``FILTERING``: the listener has filters and the request is running through them (a filter
  may pause it, with a timer or an external call, without leaving this state).
- ``ROUTED``: a route and a cluster were picked; the request is on its way to a pool.
- ``QUEUED``: waiting in an exclusive pool for a free upstream connection.
- ``SENT``: encoded for an upstream connection (written, or queued until it is connected).
- A sent or queued request goes back to ``ROUTED`` when it is retried (another endpoint) or
  resent (the connection was reset through no fault of its own).
- ``SPLIT``: the codec split the request into parts (a fan-out, ``SplitsRequests``); each
  part is a child request of its own (``ActiveRequest.parent``), created ``DECODED`` and
  going through these same states; the parent waits in ``SPLIT`` until its last part has
  an outcome, then it is ``ANSWERED`` (or ``FAILED`` if a part failed) with the merged
  reply, or ``ABANDONED`` with its parts when its client goes away.
- ``ANSWERED`` (its response went to the client, or a one-way request was sent), ``FAILED``
  (the proxy answered it with an error, or could not) and ``ABANDONED`` (its client went
  away, or reset its stream) are final: ``ActiveRequest.done``.
- Any other move is a bug in the engine: ``advance`` raises ``IllegalTransition``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from metaprotocol.core.filters import Abort
    from metaprotocol.core.state import ActiveRequest

__all__ = [
    "FINAL",
    "RULES",
    "STATE_OF_STATUS",
    "IllegalTransition",
    "PendingCall",
    "RequestState",
    "advance",
]


class RequestState(enum.IntEnum):
    DECODED = 0
    FILTERING = 1
    ROUTED = 2
    QUEUED = 3
    SENT = 4
    SPLIT = 5
    ANSWERED = 6
    FAILED = 7
    ABANDONED = 8


RULES: Final[Mapping[RequestState, tuple[RequestState, ...]]] = {
    RequestState.DECODED: (
        RequestState.FILTERING,
        RequestState.ROUTED,
        RequestState.SPLIT,
        RequestState.FAILED,
        RequestState.ABANDONED,
    ),
    RequestState.FILTERING: (
        RequestState.ROUTED,
        RequestState.SPLIT,
        RequestState.FAILED,
        RequestState.ABANDONED,
    ),
    RequestState.ROUTED: (
        RequestState.QUEUED,
        RequestState.SENT,
        RequestState.FAILED,
        RequestState.ABANDONED,
    ),
    RequestState.QUEUED: (
        RequestState.SENT,
        RequestState.ROUTED,
        RequestState.FAILED,
        RequestState.ABANDONED,
    ),
    RequestState.SENT: (
        RequestState.ROUTED,
        RequestState.ANSWERED,
        RequestState.FAILED,
        RequestState.ABANDONED,
    ),
    RequestState.SPLIT: (RequestState.ANSWERED, RequestState.FAILED, RequestState.ABANDONED),
    RequestState.ANSWERED: (),
    RequestState.FAILED: (),
    RequestState.ABANDONED: (),
}

FINAL: Final = frozenset(state for state, moves in RULES.items() if not moves)

# How a request ended (``RequestCompleted.status``) -> its final state.
STATE_OF_STATUS: Final[Mapping[str, RequestState]] = {
    "ok": RequestState.ANSWERED,
    "error": RequestState.ANSWERED,  # the upstream's own error response is an answer
    "oneway": RequestState.ANSWERED,
    "local_error": RequestState.FAILED,
    "abandoned": RequestState.ABANDONED,
    "reset": RequestState.ABANDONED,
}

# RULES compiled to one bit mask per state (bit n: state n may follow): one tuple index and
# one shift per transition, on the hot path.
_ALLOWED: Final[tuple[int, ...]] = tuple(
    sum(1 << int(to) for to in RULES[state]) for state in RequestState
)


class IllegalTransition(Exception):
    """The engine moved a request in a way RULES does not allow (a bug in the engine)."""

    def __init__(self, current: RequestState, to: RequestState) -> None:
        super().__init__(f"request cannot go from {current.name} to {to.name}")
        self.current = current
        self.to = to


def advance(req: ActiveRequest, to: RequestState) -> None:
    """Move ``req`` to ``to``, as RULES allow."""
    current = req.state
    if not _ALLOWED[current] >> to & 1:
        raise IllegalTransition(current, to)
    req.state = to


class PendingCall:
    """A request paused on a filter's external call, and what decides it when it returns.

    A plain slotted class, not a dataclass: its fields name types imported for type checking
    only, which a compiled dataclass would have to resolve at import."""

    __slots__ = ("decide", "request")

    def __init__(self, request: ActiveRequest, decide: Callable[[Any, str], Abort | None]) -> None:
        self.request = request
        self.decide = decide

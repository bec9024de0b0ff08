"""The external-call table (docs/architecture.md, "Adapters"): which handler serves each
``ExternalCall`` kind the core asks for, and how its outcome goes back to the core as
``ExternalCallCompleted``. An adapter only says how a call runs on its loop (a task, a
worker thread); a kind nobody serves is answered with an error at once, and every error is
counted (``global_ratelimit_redis_errors``, the one kind there is today)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from metaprotocol.core.events import Event, ExternalCallCompleted
from metaprotocol.core.outputs import ExternalCall
from metaprotocol.core.stats import Stats

__all__ = ["ERRORS_STAT", "ExternalCalls", "describe_error"]

ERRORS_STAT = "global_ratelimit_redis_errors"

Starter = Callable[[int, Any], object]
"""Starts one call (its id and payload) on the adapter's loop; it ends in ``complete``."""


def describe_error(exc: BaseException) -> str:
    """An exception as the error text of an ``ExternalCallCompleted`` (never empty)."""
    return str(exc) or type(exc).__name__


class ExternalCalls:
    """The handlers of ``ExternalCall`` kinds, and the way back to the core (``feed``)."""

    def __init__(self, feed: Callable[[Event], None], stats: Stats) -> None:
        self._feed = feed
        self._stats = stats
        self._starters: dict[str, Starter] = {}

    def register(self, kind: str, start: Starter) -> None:
        """Serve calls of ``kind`` with ``start``."""
        self._starters[kind] = start

    def start(self, call: ExternalCall) -> None:
        """Carry out the instruction: start its handler, or answer an error at once."""
        start = self._starters.get(call.kind)
        if start is None:
            self.complete(call.call, error=f"no handler for {call.kind!r} calls")
        else:
            start(call.call, call.payload)

    def complete(self, call: int, result: Any = None, error: str = "") -> None:
        """Hand a call's outcome to the core (on the loop's thread)."""
        if error:
            self._stats.inc(ERRORS_STAT)
        self._feed(ExternalCallCompleted(call, result, error))

    async def run(self, call: int, check: Callable[[Any], Awaitable[Any]], payload: Any) -> None:
        """Await ``check(payload)`` and complete ``call`` with its result or its error (Redis
        down, a bad reply, a bad payload: the core decides what that means)."""
        try:
            result = await check(payload)
        except Exception as exc:
            self.complete(call, error=describe_error(exc))
        else:
            self.complete(call, result)

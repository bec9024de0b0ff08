"""The external-call table on its own: kinds to handlers, outcomes back as events."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from metaprotocol.adapters.external import ERRORS_STAT, ExternalCalls
from metaprotocol.core.events import Event, ExternalCallCompleted
from metaprotocol.core.outputs import ExternalCall
from metaprotocol.core.stats import Stats


def _table() -> tuple[ExternalCalls, list[Event], Stats]:
    fed: list[Event] = []
    stats = Stats()
    return ExternalCalls(fed.append, stats), fed, stats


def _errors(stats: Stats) -> int:
    return stats.counter(ERRORS_STAT)


def test_a_kind_nobody_serves_is_answered_an_error_at_once_and_counted() -> None:
    calls, fed, stats = _table()
    calls.start(ExternalCall(7, "geo_lookup", {"ip": "1"}))
    assert fed == [ExternalCallCompleted(7, None, "no handler for 'geo_lookup' calls")]
    assert _errors(stats) == 1


def test_a_registered_kind_gets_the_call_and_its_outcome_goes_back() -> None:
    calls, fed, stats = _table()
    started: list[tuple[int, Any]] = []
    calls.register("global_ratelimit", lambda call, payload: started.append((call, payload)))
    calls.start(ExternalCall(3, "global_ratelimit", {"key": "k"}))
    assert started == [(3, {"key": "k"})] and fed == []
    calls.complete(3, True)
    assert fed == [ExternalCallCompleted(3, True, "")] and _errors(stats) == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_completes_with_the_result_or_the_error(backend: str) -> None:
    calls, fed, stats = _table()

    async def allowed(payload: Any) -> bool:
        return bool(payload)

    async def broken(payload: Any) -> bool:
        raise ConnectionError()

    async def main() -> None:
        await calls.run(1, allowed, 1)
        await calls.run(2, broken, 1)

    anyio.run(main, backend=backend)
    assert fed == [
        ExternalCallCompleted(1, True, ""),
        ExternalCallCompleted(2, None, "ConnectionError"),  # an empty message: the type
    ]
    assert _errors(stats) == 1

"""The instruction set is closed: one tuple derived from the union, and every adapter's
dispatch refuses what it does not know instead of letting it fall through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, get_args

import pytest

from metaprotocol.adapters import anyio as anyio_adapter
from metaprotocol.adapters import asyncio as asyncio_adapter
from metaprotocol.adapters import blocking as blocking_adapter
from metaprotocol.adapters.dispatcher import Dispatcher
from metaprotocol.core.config import Config
from metaprotocol.core.events import DataReceived, Event
from metaprotocol.core.outputs import (
    INSTRUCTION_TYPES,
    CloseConnection,
    ExternalCall,
    Instruction,
    NoRouteMatched,
    OpenUpstream,
    Output,
    ReadDisable,
    ReadEnable,
    RefreshSlotMap,
    Write,
)
from metaprotocol.core.stats import EndpointStatus, Stats

ONE_OF_EACH: list[Output] = [
    Write(1, b"x"),
    OpenUpstream(-1, "127.0.0.1", 9000),
    CloseConnection(1),
    ReadDisable(1),
    ReadEnable(1),
    ExternalCall(1, "global_ratelimit", None),
    RefreshSlotMap("cache"),
]


def test_the_tuple_is_exactly_the_unions_members() -> None:
    assert get_args(Instruction) == INSTRUCTION_TYPES
    assert set(INSTRUCTION_TYPES) == {type(output) for output in ONE_OF_EACH}


class _Core:
    """A core that answers any event with one of each instruction and an observer event."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.drained = False

    def handle(self, event: Event, now: float) -> list[Output]:
        return [*ONE_OF_EACH, NoRouteMatched(1)]

    def next_deadline(self) -> float | None:
        return None

    def drain(self, now: float) -> list[Output]:
        return []

    def reload(self, config: Config, now: float) -> list[Output]:
        return []

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        return []


def test_the_dispatcher_executes_every_instruction_and_observes_the_rest() -> None:
    executed: list[Instruction] = []
    observed: list[Output] = []
    dispatcher = Dispatcher(
        _Core(),
        clock=lambda: 0.0,
        execute=executed.append,
        arm_timer=lambda deadline: None,
    )
    dispatcher.observers.append(observed.append)
    dispatcher.feed(DataReceived(1, b""))
    assert executed == ONE_OF_EACH
    assert observed == [NoRouteMatched(1)]
    assert dispatcher.crashes == []


class _Unknown:
    """What an eighth instruction would look like to an adapter that was not taught it."""


def _bare(cls: type[Any]) -> Any:
    """An instance without ``__init__`` (no loop, no sockets): ``execute`` looks only at
    the instruction."""
    return object.__new__(cls)


def _asyncio_server() -> Any:
    """A real one: the compiled build's ``_Server`` is a native class, whose methods take
    no stand-in ``self`` and whose instances cannot skip ``__init__``."""

    async def make() -> Any:
        return asyncio_adapter._Server(
            asyncio.get_running_loop(), Config((), ()), _Core(), admin=False
        )

    return asyncio.run(make())


@pytest.mark.parametrize(
    "make",
    [
        lambda: _bare(anyio_adapter._Server),
        _asyncio_server,
        lambda: _bare(blocking_adapter._Loop),
    ],
    ids=["anyio", "asyncio", "blocking"],
)
def test_every_adapter_refuses_an_instruction_it_does_not_know(make: Callable[[], Any]) -> None:
    adapter = make()
    with pytest.raises(AssertionError):
        adapter.execute(_Unknown())

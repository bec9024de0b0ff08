"""The adapters' shared base on its own: setup from a config, reload, drain, the admin core."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from metaprotocol.adapters.admin_core import AdminCore
from metaprotocol.adapters.serving import Serving
from metaprotocol.core.config import AdminConfig, Config, ListenerConfig
from metaprotocol.core.events import Accepted
from metaprotocol.core.outputs import Instruction, Output
from tests.adapters.fakecore import FakeCore


class _Timer:
    def __init__(self) -> None:
        self.armed: list[float | None] = []

    def arm(self, deadline: float | None) -> None:
        self.armed.append(deadline)


def _listener(name: str, port: int = 0) -> ListenerConfig:
    return ListenerConfig(name=name, host="127.0.0.1", port=port, codec="fake", routes=())


def _config(*names: str, admin: bool = True) -> Config:
    return Config(
        listeners=tuple(_listener(name) for name in names),
        clusters=(),
        admin=AdminConfig(host="127.0.0.1", port=0) if admin else None,
    )


def _serving(
    config: Config, core: FakeCore | None = None, *, admin: bool = True
) -> tuple[Serving, list[Instruction], list[_Timer]]:
    executed: list[Instruction] = []
    timers: list[_Timer] = []

    def timer(fire: object) -> _Timer:
        timers.append(made := _Timer())
        return made

    serving = Serving(
        config,
        core or FakeCore(config),
        clock=lambda: 5.0,
        execute=executed.append,
        timer=timer,
        admin=admin,
    )
    return serving, executed, timers


def test_start_builds_the_core_and_the_logs_from_the_config(tmp_path: Path) -> None:
    config = replace(
        _config(), listeners=(replace(_listener("a"), codec="redis"),),
        access_log=str(tmp_path / "access.log"),
    )  # fmt: skip
    serving = Serving.start(
        config, None, clock=lambda: 0.0, execute=lambda i: None, timer=lambda fire: _Timer()
    )
    try:
        assert type(serving.core).__name__ == "Proxy"
        assert serving.observers.access_log is not None
        assert serving.dispatcher.observers is serving.observers
    finally:
        serving.close_logs()


def test_the_admin_core_runs_under_a_dispatcher_of_its_own_sharing_execute() -> None:
    serving, executed, timers = _serving(_config("a", admin=True))
    assert serving.admin is not None and isinstance(serving.admin.core, AdminCore)
    assert len(timers) == 2  # one per dispatcher
    serving.admin.core.gate.max_connections = 0
    serving.admin.feed(Accepted(1, "admin"))
    assert [type(i).__name__ for i in executed] == ["CloseConnection"]
    assert _serving(_config("a", admin=True), admin=False)[0].admin is None
    assert _serving(_config("a", admin=False))[0].admin is None


def test_started_arms_the_timers_for_what_the_cores_scheduled() -> None:
    core = FakeCore(_config("a"))
    core.timers.append((7.0, 1))
    serving, _, timers = _serving(_config("a"), core)
    serving.started()
    assert timers[0].armed == [7.0] and timers[1].armed == []  # the admin core: nothing yet


def test_reload_binds_what_it_adds_and_swaps_the_core_config() -> None:
    serving, _, _ = _serving(_config("a"))
    new = _config("a", "b")
    changes = serving.reload(new)
    try:
        assert changes.removed == () and set(changes.added) == {"b"}
        assert serving.config is new and serving.core.config is new  # type: ignore[attr-defined]
    finally:
        changes.close()


def test_a_reload_the_core_refuses_changes_nothing_and_unbinds() -> None:
    class Refuses(FakeCore):
        def reload(self, config: Config, now: float) -> list[Output]:
            raise ValueError("no")

    start = _config("a")
    serving, _, _ = _serving(start, Refuses(start))
    with pytest.raises(ValueError):
        serving.reload(_config("a", "b"))
    assert serving.config is start
    with socket.socket() as probe:  # nothing was left bound: the refused "b" is closed
        probe.bind(("127.0.0.1", 0))


def test_drain_reports_once_when_the_core_has_drained_and_refuses_reloads() -> None:
    core = FakeCore(_config("a"))
    core.listener_of[1] = "a"  # one open client
    serving, executed, _ = _serving(_config("a"), core)
    app = serving.admin_app()
    assert app.respond("GET", "/ready")[0] == 200
    drained: list[bool] = []
    serving.start_drain(lambda: drained.append(True))
    assert [type(i).__name__ for i in executed] == ["CloseConnection"]  # the core's answer
    assert drained == [True] and serving.drained  # the fake core forgets at once
    serving.start_drain(lambda: drained.append(True))  # a second drain: nothing new
    assert drained == [True]
    assert app.respond("GET", "/ready")[0] == 503
    with pytest.raises(RuntimeError):
        serving.reload(_config("a"))


def test_a_job_off_the_loop_feeds_its_outcome_to_the_core_until_closed() -> None:
    import queue
    from collections.abc import Callable

    from metaprotocol.core.events import ExternalCallCompleted

    posted: queue.Queue[Callable[[], None]] = queue.Queue()
    core = FakeCore(_config("a"))
    serving = Serving(
        _config("a"), core, clock=lambda: 5.0, execute=lambda i: None,
        timer=lambda fire: _Timer(), post=posted.put,
    )  # fmt: skip
    serving.every(0.0, lambda: "10.0.0.7", lambda r, e: ExternalCallCompleted(9, r, e))
    posted.get(timeout=10)()  # the loop's turn
    assert core.events[-1] == (5.0, ExternalCallCompleted(9, "10.0.0.7", ""))
    serving.close()
    seen = len(core.events)
    while not posted.empty():  # posted before the close: dropped, not fed
        posted.get()()
    assert len(core.events) == seen
    with pytest.raises(RuntimeError):  # an adapter that gave no post
        _serving(_config("a"))[0].every(1.0, lambda: None, lambda r, e: None)

"""``metaprotocol run`` as a real process with the real core: traffic, SIGHUP reload (good
and bad files), SIGTERM drain and exit 0, and ``--workers`` sharing a port."""

from __future__ import annotations

import http.client
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.test_ratelimit_redis import _free_port, redis_port  # noqa: F401

TIMEOUT = 15.0
ADAPTERS = ["asyncio", "uvloop", "trio", "blocking"]


def _write_config(
    path: Path, upstream: int, listen: int = 0, admin: int = 0, route: str = "a"
) -> None:
    path.write_text(
        f"""
admin: {{address: "127.0.0.1:{admin}"}}
listeners:
  - name: redis
    address: 127.0.0.1:{listen}
    codec: redis
    routes:
      - name: {route}
        route: {{cluster: main}}
clusters:
  - name: main
    endpoints: ["127.0.0.1:{upstream}"]
""",
        encoding="utf-8",
    )


class Proc:
    def __init__(self, args: list[str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "metaprotocol", "run", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        end = time.monotonic() + TIMEOUT
        while True:
            for line in self.seen:
                if text in line:
                    self.seen.remove(line)
                    return line
            try:
                self.seen.append(self.lines.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"{text!r} never logged; got {self.seen}") from None

    def address(self, text: str) -> tuple[str, int]:
        host, _, port = self.wait_for(text).rsplit(" ", 1)[1].strip().rpartition(":")
        return host, int(port)


@pytest.fixture
def proc_factory() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
        p.popen.wait(TIMEOUT)
        if p.popen.stderr is not None:
            p.popen.stderr.close()


def _get(address: tuple[str, int], path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _ping(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, TIMEOUT) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(100)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_run_reload_and_drain(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    adapter: str,
    proc_factory: list[Proc],
) -> None:
    if adapter == "uvloop":
        pytest.importorskip("uvloop")
    config = tmp_path / "proxy.yaml"
    _write_config(config, redis_port)
    proc = Proc([str(config), "--adapter", adapter])
    proc_factory.append(proc)
    listener = proc.address("listener redis on")
    admin = proc.address("admin on")
    assert _get(admin, "/ready") == (200, "ready\n")
    assert _ping(listener) == b"+PONG\r\n"
    status, text = _get(admin, "/stats/prometheus")
    assert status == 200 and "metaprotocol_" in text

    _write_config(config, redis_port, route="b")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_for("reloaded")
    dump = json.loads(_get(admin, "/config_dump")[1])
    assert dump["listeners"][0]["routes"][0]["name"] == "b"

    config.write_text("listeners: [oops\n", encoding="utf-8")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_for("rejected")
    dump = json.loads(_get(admin, "/config_dump")[1])
    assert dump["listeners"][0]["routes"][0]["name"] == "b"
    assert _ping(listener) == b"+PONG\r\n"

    idle = socket.create_connection(listener, TIMEOUT)  # an idle client is closed by the drain
    idle.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert idle.recv(100) == b"+PONG\r\n"
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0
    assert idle.recv(10) == b""
    idle.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_sighup_moves_a_listener(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    adapter: str,
    proc_factory: list[Proc],
) -> None:
    if adapter == "uvloop":
        pytest.importorskip("uvloop")
    config = tmp_path / "proxy.yaml"
    _write_config(config, redis_port)
    proc = Proc([str(config), "--adapter", adapter])
    proc_factory.append(proc)
    before = proc.address("listener redis on")
    client = socket.create_connection(before, TIMEOUT)  # open before the move
    moved = _free_port()
    _write_config(config, redis_port, listen=moved)
    proc.popen.send_signal(signal.SIGHUP)
    assert proc.address("listener redis on") == ("127.0.0.1", moved)
    proc.wait_for("reloaded")
    assert _ping(("127.0.0.1", moved)) == b"+PONG\r\n"
    end = time.monotonic() + TIMEOUT
    while True:  # the old port stops accepting (at once, or once its accept loop ends)
        try:
            socket.create_connection(before, TIMEOUT).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < end, "the old port still accepts"
        time.sleep(0.005)
    client.sendall(b"*1\r\n$4\r\nPING\r\n")  # same listener name: still served
    assert client.recv(100) == b"+PONG\r\n"
    client.close()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not in {text}")


def test_workers_share_one_port_and_one_admin(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    proc_factory: list[Proc],
) -> None:
    config = tmp_path / "proxy.yaml"
    listen = _free_port()
    _write_config(config, redis_port, listen=listen)
    proc = Proc([str(config), "--workers", "2"])
    proc_factory.append(proc)
    admin = proc.address("admin on")
    for index in range(2):
        proc.wait_for(f"worker {index}: listener redis on")
    end = time.monotonic() + TIMEOUT
    while _get(admin, "/ready")[0] != 200:  # until both workers have reported
        assert time.monotonic() < end, "the workers never became ready"
        time.sleep(0.02)
    for _ in range(20):  # 20 connections: the kernel spreads them over both workers
        assert _ping(("127.0.0.1", listen)) == b"+PONG\r\n"
    status, text = _get(admin, "/stats/prometheus")
    assert status == 200
    # The supervisor's admin sums the workers' stats (worker 0 alone would see about half).
    assert _sample(text, 'metaprotocol_request_total{listener="redis"}') == 20
    assert _sample(text, 'metaprotocol_downstream_cx_total{listener="redis"}') == 20
    assert _sample(text, "metaprotocol_workers") == 2
    assert _sample(text, "metaprotocol_workers_unreachable") == 0
    stats = json.loads(_get(admin, "/stats/json")[1])
    assert {"name": "workers", "labels": [], "value": 2} in stats["gauges"]
    dump = json.loads(_get(admin, "/config_dump")[1])
    assert dump["listeners"][0]["name"] == "redis"
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0


def test_workers_refuse_port_zero(tmp_path: Path, proc_factory: list[Proc]) -> None:
    config = tmp_path / "proxy.yaml"
    _write_config(config, 6379)
    proc = Proc([str(config), "--workers", "2"])
    proc_factory.append(proc)
    assert proc.popen.wait(TIMEOUT) == 1
    proc.wait_for("needs fixed ports")


def test_workers_refuse_a_busy_admin_address(tmp_path: Path, proc_factory: list[Proc]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        config = tmp_path / "proxy.yaml"
        _write_config(config, 6379, listen=_free_port(), admin=busy.getsockname()[1])
        proc = Proc([str(config), "--workers", "2"])
        proc_factory.append(proc)
        assert proc.popen.wait(TIMEOUT) == 1
        proc.wait_for("error: admin cannot listen on 127.0.0.1:")


def test_blocking_sighup_reloads_on_the_loop_not_inside_the_interrupted_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The blocking loop runs in the main thread, where Python runs signal handlers between
    # any two bytecodes. A reload done inside the handler changed handle.addresses while
    # the announcement iterated it, and the process died ("dictionary keys changed during
    # iteration"); the handler must only hand the reload to the loop.
    import os

    from metaprotocol import runner
    from metaprotocol.adapters import blocking
    from metaprotocol.configfile import load_config

    config_path = tmp_path / "proxy.yaml"
    _write_config(config_path, 6379)
    config = load_config(config_path)
    handed: list[Any] = []
    reloaded: list[Any] = []

    reopened: list[bool] = []

    class FakeServing:
        def reopen_access_log(self) -> None:
            reopened.append(True)

    class FakeHandle:
        addresses = {"redis": ("127.0.0.1", 1)}
        admin_address = None
        serving = FakeServing()

        def call(self, fn: Any) -> None:
            handed.append(fn)

        def reload(self, new: Any) -> None:
            reloaded.append(new)

    def fake_serve_forever(cfg: Any, ready: Any, *, reuse_port: bool, admin: bool) -> None:
        ready(FakeHandle())
        os.kill(os.getpid(), signal.SIGHUP)  # the handler runs before the next line
        assert len(handed) == 1 and reloaded == []
        handed[0]()  # the loop's next turn
        assert len(reloaded) == 1 and reopened == [True]  # SIGHUP reopens the access log too
        os.kill(os.getpid(), signal.SIGUSR1)  # only reopens, on the loop's next turn as well
        assert len(handed) == 2 and reopened == [True]
        handed[1]()
        assert len(reloaded) == 1 and reopened == [True, True]

    monkeypatch.setattr(blocking, "serve_forever", fake_serve_forever)
    signals = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        runner._serve_blocking(str(config_path), config, False, True, 1.0, lambda handle: None)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert len(reloaded) == 1

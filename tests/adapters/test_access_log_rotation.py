"""``metaprotocol run`` as a real process: the access log after ``mv`` and SIGUSR1 (or SIGHUP)
goes on in a new file, with a line for every answer, the proxy's own refusals included."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.test_ratelimit_redis import _free_port, redis_port  # noqa: F401
from tests.adapters.test_runner import ADAPTERS, TIMEOUT, Proc, proc_factory  # noqa: F401


def _write_config(path: Path, upstream: int, log: Path, listen: int = 0) -> None:
    path.write_text(
        f"""
access_log: {{path: "{log}", metadata: [command]}}
listeners:
  - name: redis
    address: 127.0.0.1:{listen}
    codec: redis
    routes:
      - name: main
        route: {{cluster: main}}
clusters:
  - name: main
    endpoints: ["127.0.0.1:{upstream}"]
""",
        encoding="utf-8",
    )


def _lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The file's lines once it has ``count`` (the proxy writes them after answering)."""
    end = time.monotonic() + TIMEOUT
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= count:
            assert len(lines) == count, lines
            return lines
        assert time.monotonic() < end, f"{path} has {len(lines)} of {count} lines"
        time.sleep(0.01)


def _ping_and_refused(address: tuple[str, int]) -> str:
    """PING (answered by Redis) then MULTI (refused by the proxy); the client's address."""
    with socket.create_connection(address, TIMEOUT) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n*1\r\n$5\r\nMULTI\r\n")
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = s.recv(1000)
            assert chunk, data
            data += chunk
        assert data.startswith(b"+PONG\r\n-ERR ")
        host, port = s.getsockname()[:2]
        return f"{host}:{port}"


def _check(lines: list[dict[str, Any]], client: str, upstream: int) -> None:
    [ping] = [line for line in lines if line["route"] is not None]
    [multi] = [line for line in lines if line["route"] is None]
    assert multi["metadata"] == {}  # refused before it became a routed request
    assert ping["metadata"] == {"command": "PING"}
    assert (ping["status"], ping["response_flags"], ping["attempts"]) == ("OK", "-", 1)
    assert ping["upstream_host"] == f"127.0.0.1:{upstream}"
    assert (ping["bytes_received"], ping["bytes_sent"]) == (14, 7)
    assert (multi["status"], multi["response_flags"], multi["attempts"]) == ("ERR", "DPE", 0)
    assert multi["upstream_host"] is None and multi["bytes_received"] == 15
    for line in lines:
        assert line["downstream_remote_address"] == client
        assert line["listener"] == "redis" and line["codec"] == "redis"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_sigusr1_and_sighup_reopen_the_access_log(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    adapter: str,
    proc_factory: list[Proc],  # noqa: F811
) -> None:
    if adapter == "uvloop":
        pytest.importorskip("uvloop")
    log = tmp_path / "access.log"
    config = tmp_path / "proxy.yaml"
    _write_config(config, redis_port, log)
    proc = Proc([str(config), "--adapter", adapter])
    proc_factory.append(proc)
    listener = proc.address("listener redis on")

    client = _ping_and_refused(listener)
    _check(_lines(log, 2), client, redis_port)

    first = tmp_path / "access.log.1"
    log.rename(first)
    proc.popen.send_signal(signal.SIGUSR1)
    proc.wait_for("reopened")
    client = _ping_and_refused(listener)
    _check(_lines(log, 2), client, redis_port)
    assert len(_lines(first, 2)) == 2  # nothing more went to the moved file

    second = tmp_path / "access.log.2"
    log.rename(second)
    proc.popen.send_signal(signal.SIGHUP)  # a reload reopens it too
    proc.wait_for("reopened")
    proc.wait_for("reloaded")
    client = _ping_and_refused(listener)
    _check(_lines(log, 2), client, redis_port)
    assert len(_lines(second, 2)) == 2

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0


def test_workers_reopen_on_sigusr1_sent_to_the_supervisor(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    proc_factory: list[Proc],  # noqa: F811
) -> None:
    log = tmp_path / "access.log"
    config = tmp_path / "proxy.yaml"
    port = _free_port()
    _write_config(config, redis_port, log, listen=port)
    proc = Proc([str(config), "--workers", "2"])
    proc_factory.append(proc)
    proc.wait_for("worker 0: listener redis on")
    proc.wait_for("worker 1: listener redis on")
    log.rename(tmp_path / "access.log.1")
    proc.popen.send_signal(signal.SIGUSR1)
    proc.wait_for("reopened")
    proc.wait_for("reopened")  # both workers
    client = _ping_and_refused(("127.0.0.1", port))
    _check(_lines(log, 2), client, redis_port)
    assert (tmp_path / "access.log.1").read_text() == ""
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0

"""``metaprotocol run`` that cannot start: exit 1, one ``error:`` line per problem naming the
listener (or admin) and address, on every adapter; a missing optional package names its
extra; no traceback unless ``--log-level debug``. And ``--log-format json``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.test_ratelimit_redis import _free_port
from tests.adapters.test_runner import TIMEOUT, Proc, proc_factory  # noqa: F401

ADAPTERS = ["asyncio", "uvloop", "trio", "blocking"]


@pytest.fixture
def busy() -> Iterator[tuple[int, int]]:
    """Two loopback ports something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as a, socket.create_server(("127.0.0.1", 0)) as b:
        yield a.getsockname()[1], b.getsockname()[1]


def _config(path: Path, listen: int, admin: int | None = None, upstream: int = 6379) -> Path:
    lines = [] if admin is None else [f'admin: {{address: "127.0.0.1:{admin}"}}']
    lines += [
        "listeners:",
        f'  - {{name: redis, address: "127.0.0.1:{listen}", codec: redis,',
        "     routes: [{name: all, route: {cluster: main}}]}",
        '  - {name: spare, address: "127.0.0.1:0", codec: redis,',
        "     routes: [{name: all, route: {cluster: main}}]}",
        "clusters:",
        f'  - {{name: main, endpoints: ["127.0.0.1:{upstream}"],',
        "     outlier_detection: {consecutive_failures: 3, max_ejection_percent: 100}}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", script, *args] if script else [
        sys.executable, "-m", "metaprotocol", "run", *args
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_ports_in_use_are_one_line_each(
    adapter: str, busy: tuple[int, int], tmp_path: Path
) -> None:
    if adapter == "uvloop":
        pytest.importorskip("uvloop")
    listen, admin = busy
    config = _config(tmp_path / "proxy.yaml", listen, admin)
    done = _run(str(config), "--adapter", adapter)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: listener 'redis' cannot listen on 127.0.0.1:{listen}: address already in use",
        f"error: admin cannot listen on 127.0.0.1:{admin}: address already in use",
    ]


def test_workers_port_in_use_is_one_line(busy: tuple[int, int], tmp_path: Path) -> None:
    config = _config(tmp_path / "proxy.yaml", busy[0])
    done = _run(str(config), "--workers", "2")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: listener 'redis' cannot listen on 127.0.0.1:{busy[0]}: address already in use",
    ]


# The checks bind before the adapter does; a port taken in between (or any other failure
# while starting) is still one line per exception, an ExceptionGroup from trio included.
UNFORESEEN = """
import sys
from metaprotocol import logs, runner
runner.bind_problems = lambda config, reuse_port: []
logs.configure(sys.argv[3])
sys.exit(runner.run(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unforeseen_bind_failure_is_one_line(
    adapter: str, busy: tuple[int, int], tmp_path: Path
) -> None:
    if adapter == "uvloop":
        pytest.importorskip("uvloop")
    config = _config(tmp_path / "proxy.yaml", busy[0])
    done = _run(str(config), adapter, "info", script=UNFORESEEN)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith("address already in use"), line


def test_debug_level_shows_the_traceback(busy: tuple[int, int], tmp_path: Path) -> None:
    config = _config(tmp_path / "proxy.yaml", busy[0])
    done = _run(str(config), "trio", "debug", script=UNFORESEEN)
    assert done.returncode == 1
    assert "error: address already in use" in done.stderr
    assert "Traceback" in done.stderr


MISSING = """
import sys
sys.modules[sys.argv[1]] = None  # as if it were not installed
from metaprotocol.cli import main
sys.exit(main(["run", sys.argv[2], "--adapter", sys.argv[1]]))
"""


@pytest.mark.parametrize("adapter", ["uvloop", "trio"])
def test_a_missing_adapter_package_names_its_extra(adapter: str, tmp_path: Path) -> None:
    config = _config(tmp_path / "proxy.yaml", _free_port())
    done = _run(adapter, str(config), script=MISSING)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: --adapter {adapter} needs the {adapter} package, which is not installed: "
        f"pip install 'metaprotocol[{adapter}]'"
    ]


def test_json_logs_one_object_per_line(
    tmp_path: Path,
    proc_factory: list[Proc],  # noqa: F811
) -> None:
    dead = _free_port()  # the upstream: nothing listens there
    config = _config(tmp_path / "proxy.yaml", 0, 0, upstream=dead)
    proc = Proc([str(config), "--log-format", "json"])
    proc_factory.append(proc)
    port = json.loads(proc.wait_for('"listener redis on'))["message"].rsplit(":", 1)[1]
    for _ in range(5):  # three fail to connect (the third ejects), two find none healthy
        with socket.create_connection(("127.0.0.1", int(port)), TIMEOUT) as client:
            client.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert client.recv(100).startswith(b"-")
    connect = json.loads(proc.wait_for("connect failure:"))
    assert connect["level"] == "warning" and f"127.0.0.1:{dead}" in connect["message"]
    ejected = json.loads(proc.wait_for("ejected for"))
    assert ejected["level"] == "warning"
    config.write_text("listeners: [", encoding="utf-8")
    proc.popen.send_signal(signal.SIGHUP)
    rejected = json.loads(proc.wait_for("rejected"))
    assert rejected["level"] == "warning" and rejected["logger"] == "metaprotocol"
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0
    proc.wait_for('"stopped"')  # the last line: every line before it has been read
    lines = proc.seen
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys()
    # Two more connect failures within seconds: rate limited, not a line each.
    assert not [line for line in lines if "connect failure:" in line]

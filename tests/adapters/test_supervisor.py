"""``metaprotocol run --workers N`` supervises: a worker killed with SIGKILL is replaced,
``/ready`` is 200 again, and the summed counters never go backwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.supervisor import RESPAWN_DELAY, RESPAWN_DELAY_MAX, respawn_delay
from tests.adapters.test_ratelimit_redis import _free_port, redis_port  # noqa: F401
from tests.adapters.test_runner import (
    TIMEOUT,
    Proc,
    _get,
    _ping,
    _sample,
    _write_config,
    proc_factory,  # noqa: F401
)

REPLACED_WITHIN = 5.0  # seconds (the first restart waits RESPAWN_DELAY)


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (Linux /proc)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _wait_ready(admin: tuple[str, int], timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while _get(admin, "/ready")[0] != 200:
        assert time.monotonic() < end, "the workers never became ready"
        time.sleep(0.02)


def test_respawn_delay_doubles_up_to_the_maximum() -> None:
    assert respawn_delay(0) == RESPAWN_DELAY
    assert respawn_delay(1) == 2 * RESPAWN_DELAY
    assert respawn_delay(3) == 8 * RESPAWN_DELAY
    assert respawn_delay(100) == RESPAWN_DELAY_MAX


def test_a_killed_worker_is_replaced_and_its_counters_stay(
    tmp_path: Path,
    redis_port: int,  # noqa: F811
    proc_factory: list[Proc],  # noqa: F811
) -> None:
    config = tmp_path / "proxy.yaml"
    listen = _free_port()
    _write_config(config, redis_port, listen=listen)
    proc = Proc([str(config), "--workers", "2"])
    proc_factory.append(proc)
    pids = [int(p) for p in proc.wait_for("started 2 workers:").rsplit(":", 1)[1].split()]
    admin = proc.address("admin on")
    _wait_ready(admin)
    for _ in range(10):
        assert _ping(("127.0.0.1", listen)) == b"+PONG\r\n"
    text = _get(admin, "/stats/prometheus")[1]
    assert _sample(text, 'metaprotocol_request_total{listener="redis"}') == 10
    assert _sample(text, "metaprotocol_workers_restarted_total") == 0

    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    proc.wait_for(f"(pid {pids[0]}) was killed by SIGKILL; restarting it in")
    restarted = proc.wait_for("worker 0 restarted (pid ")
    pids[0] = int(restarted.rsplit("(pid ", 1)[1].split(")")[0])
    assert time.monotonic() - killed_at < REPLACED_WITHIN
    _wait_ready(admin)
    assert _get(admin, "/ready") == (200, "ready\n")

    text = _get(admin, "/stats/prometheus")[1]
    assert _sample(text, 'metaprotocol_request_total{listener="redis"}') == 10  # not lost
    assert _sample(text, "metaprotocol_workers_restarted_total") == 1
    assert _sample(text, "metaprotocol_workers") == 2
    for _ in range(10):
        assert _ping(("127.0.0.1", listen)) == b"+PONG\r\n"
    text = _get(admin, "/stats/prometheus")[1]
    assert _sample(text, 'metaprotocol_request_total{listener="redis"}') == 20
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families)  # the sum keeps one family each
    assert text.count("# HELP ") == text.count("# TYPE ") == len(families)
    # Process metrics add up the supervisor and its two workers.
    rss = [_rss(pid) for pid in (proc.popen.pid, *pids)]
    assert 0.8 * sum(rss) < _sample(text, "process_resident_memory_bytes") < 1.2 * sum(rss)
    status, clusters = _get(admin, "/clusters")
    assert status == 200 and f"main::127.0.0.1:{redis_port}::health_flags::healthy" in clusters
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(TIMEOUT) == 0


FAILING_WORKERS = """
import logging, sys
from metaprotocol.configfile import parse_config
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.supervisor import run_workers
logging.basicConfig(level="INFO")
config = parse_config({"listeners": [{"name": "x", "address": "127.0.0.1:%d", "codec": "redis",
                       "routes": [{"name": "r", "route": {"cluster": "c"}}]}],
                       "clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"]}]})
sys.exit(run_workers(config, 2, lambda index, link: 3))  # exits before it reports
"""


def test_a_worker_that_fails_on_its_first_start_stops_the_supervisor() -> None:
    script = FAILING_WORKERS % _free_port()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 1, done.stderr
    assert "failed to start; stopping" in done.stderr
    assert "restart" not in done.stderr

"""``metaprotocol demo``: real upstreams, the embedded proxy, real clients, one report."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys

import pytest

import metaprotocol.demo
from metaprotocol.demo import kv_clients, upstreams
from metaprotocol.demo.report import percentile

DEMO_TIMEOUT = 60  # seconds; the demo itself aims for well under 15


def run_in_process() -> tuple[int, str]:
    out = io.StringIO()
    code = asyncio.run(metaprotocol.demo.run(out))
    return code, out.getvalue()


def block(report: str, codec: str) -> str:
    """The report's lines for one codec (from its heading to the next blank line)."""
    match = re.search(rf"^{codec}\b.*?(?=^\n|\Z)", report, re.M | re.S)
    assert match, f"no {codec} block in:\n{report}"
    return match.group(0)


def test_demo_command_exits_0_and_reports_every_codec() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metaprotocol", "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    report = done.stdout
    assert done.returncode == 0, f"stdout:\n{report}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(r"^ok: every check passed \(\d codecs\) in [\d.]+s$", report, re.M)
    assert "UNEXPECTED" not in report and "FAILED" not in report

    dubbo = block(report, "dubbo")
    assert "greetings-v1 -> dubbo-v1 x5" in dubbo
    assert "greetings-v2 -> dubbo-v2 x5" in dubbo
    assert "sayHi('alice') -> 'hello alice, from v2'" in dubbo
    assert "no route -> status 60 SERVICE_NOT_FOUND x1" in dubbo
    assert "heartbeat       answered by the proxy itself" in dubbo

    thrift = block(report, "thrift")
    assert "whoami -> thrift-b x5" in thrift
    assert "declared DivideByZero" in thrift

    http = block(report, "http")
    split = re.search(r"weighted split  web (\d+) / web-canary (\d+) of 100", http)
    assert split, http
    web, canary = int(split.group(1)), int(split.group(2))
    assert web + canary == 100 and 60 <= web <= 95 and canary > 0
    assert "burst of 20 to /limited: 5 passed, 15 rate-limited (HTTP 429)" in http
    assert "no route -> 404 from the proxy x1" in http
    assert re.search(r"latency +p50 [\d.]+ ms  p99 [\d.]+ ms", http)

    redis = block(report, "redis")
    if upstreams.find_redis_server() is None:
        assert "redis-server not installed: skipping Redis" in report
    else:
        assert "sessions -> redis-sessions x10" in redis
        assert "MULTI -> -ERR not supported by the proxy x1" in redis
    assert report.rstrip().splitlines()[-2].startswith("stopped: proxy drained and closed")


def test_demo_without_redis_server_skips_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstreams, "find_redis_server", lambda: None)
    code, report = run_in_process()
    assert code == 0, report
    assert "redis-server not installed: skipping Redis" in report
    assert "redis\n  skipped" in report
    assert "ok: every check passed (3 codecs)" in report
    assert "6 sample upstreams stopped" in report


def test_demo_without_the_demo_extra_skips_thrift_and_redis_and_says_how(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = {"thriftpy2", "redis"}  # as in a plain `pip install metaprotocol`
    monkeypatch.setattr(upstreams, "missing_packages", lambda *names: [*missing & set(names)])
    code, report = run_in_process()
    assert code == 0, report
    assert "thriftpy2 not installed: skipping Thrift (pip install 'metaprotocol[demo]')" in report
    assert "redis-py not installed: skipping Redis (pip install 'metaprotocol[demo]')" in report
    assert "thrift\n  skipped" in report and "redis\n  skipped" in report
    assert "ok: every check passed (2 codecs)" in report
    assert report.rstrip().splitlines()[-1] == (
        "skipped: thrift, redis (see why above; pip install 'metaprotocol[demo]' brings the "
        "clients)"
    )


def test_demo_exits_1_and_says_why_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client now expects one more request through than the proxy's bucket holds.
    monkeypatch.setattr(upstreams, "find_redis_server", lambda: None)
    monkeypatch.setattr(kv_clients, "RATE_LIMIT_BURST", 6)
    code, report = run_in_process()
    assert code == 1, report
    assert "UNEXPECTED      burst: expected 6 passed / 14 rate-limited, got 5 / 15" in report
    assert "FAILED: 1 unexpected result(s): see the UNEXPECTED lines above" in report
    assert "stopped: proxy drained and closed" in report


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0

"""What one client that never reads its replies costs the proxy and another client.

Per adapter and per protocol (HTTP/1.1 from nginx, Redis from redis-server), the proxy runs as
its own process (``metaprotocol run``) and a non-reading client pipelines GETs of a 1 MiB
answer for ``--seconds`` while an innocent client sends small GETs one at a time. Two setups:

- ``default``: default limits; the non-reader's answers are held by the upstream server
  (the connection it alone uses is read-disabled), the innocent client uses another one;
- ``shared``: one upstream connection per endpoint, so the non-reader shares it with the
  innocent client: its answers go to its own output buffer until ``output_buffer_limit``
  (default 32 MiB) closes it; it reconnects at once and goes on.

Reported: the proxy's peak resident memory while the non-reader runs, above its level
after warm-up (the kernel's high-water mark, VmHWM), how often the non-reader was closed,
and the innocent client's p50 / p99 latency alone and beside the non-reader (from one second
after it started).

    python benchmarks/isolation.py [--seconds 8] [--adapters asyncio,uvloop,trio,blocking]

The end-to-end benchmark runs the same measurement as its ``isolation`` group
(``benchmarks/e2e/isolation.py``), for each build, into latest.md / latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's peer helpers (nginx, redis-server)

from tests.e2e.servers import BIG_BODY, nginx_server, recv_exactly, redis_server  # noqa: E402

from metaprotocol.testing.hostile import NonReader, peak_rss  # noqa: E402

__all__ = ["SETUPS", "Outcome", "ProxyProcess", "config", "main", "peers", "run_one"]

MiB = 1 << 20
SETUPS = ("default", "shared")


class ProxyProcess:
    """``python -m metaprotocol run`` (on ``python``: another build's interpreter); its ports
    come from its log."""

    def __init__(
        self,
        config: dict[str, Any],
        adapter: str,
        workdir: Path,
        python: str = sys.executable,
    ) -> None:
        path = workdir / f"isolation-{adapter}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [python, "-m", "metaprotocol", "run", str(path), "--adapter", adapter],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def port(self, what: str) -> int:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            for line in self.lines:
                if found := re.search(rf"{what} on 127\.0\.0\.1:(\d+)", line):
                    return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError("".join(self.lines))
            time.sleep(0.02)
        raise RuntimeError(f"no {what} in the log: {''.join(self.lines)}")

    def overflows(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port("admin")), 10) as sock:
            sock.sendall(b"GET /stats/prometheus HTTP/1.0\r\n\r\n")
            text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
        found = re.search(r"^\S*downstream_cx_output_overflow\S* (\d+)", text, re.MULTILINE)
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def config(codec: str, upstream: int, shared: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {"name": "peer", "endpoints": [f"127.0.0.1:{upstream}"]}
    route: dict[str, Any] = {"cluster": "peer"}
    if shared:
        cluster["max_connections_per_endpoint"] = 1
        key = ":method" if codec == "http1" else "command"
        route["retries"] = {
            "attempts": 0,
            "non_idempotent": {"metadata": {key: {"exact": "GET", "invert": True}}},
        }
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [
            {"name": "bench", "address": "127.0.0.1:0", "codec": codec,
             "routes": [{"name": "all", "route": route}]}
        ],
        "clusters": [cluster],
    }  # fmt: skip


def resp_get(key: str) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode())


class AnswerError(Exception):
    """The innocent client got an error reply."""


def http_call(sock: socket.socket) -> None:
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: innocent\r\n\r\n")
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    found = re.search(rb"content-length: *(\d+)", bytes(head), re.IGNORECASE)
    recv_exactly(sock, int(found.group(1)) if found else 0)
    if not head.startswith(b"HTTP/1.1 200"):
        raise AnswerError(bytes(head[:40]).decode())


def redis_call(sock: socket.socket) -> None:
    sock.sendall(resp_get("isolation:small"))
    first = recv_exactly(sock, 1)
    if first == b"-":  # an error reply (counted by the caller)
        line = bytearray(first)
        while not line.endswith(b"\r\n"):
            line += sock.recv(1)
        raise AnswerError(line.decode())
    if first + recv_exactly(sock, 6) != b"$1\r\nv\r\n":
        raise AssertionError("wrong answer")


def percentiles(samples: list[float]) -> tuple[float, float] | None:
    """p50 and p99 in ms of the answered calls (None when none was answered)."""
    ordered = sorted(x for x in samples if x == x)  # NaN: an error reply
    if not ordered:
        return None
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e3, p99 * 1e3


def _ms(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


@dataclass(frozen=True)
class Outcome:
    """One measurement: ``adapter`` (the build's name included when it is not the default),
    ``codec``, ``setup`` (one of ``SETUPS``); the proxy's peak RSS above its warm level, how
    often the non-reader was closed (and how often the proxy counted it), and the innocent
    client's p50 / p99 in ms alone and beside the non-reader."""

    adapter: str
    codec: str
    setup: str
    grown_mib: float
    closed: int
    counted: int
    alone: tuple[float, float] | None
    beside: tuple[float, float] | None
    requests: int
    errors: int

    def row(self) -> str:
        return (
            f"| {self.adapter} | {self.codec} | {self.setup} | {self.grown_mib:.1f} | "
            f"{self.closed} ({self.counted} counted) | {_ms(self.alone)} | "
            f"{_ms(self.beside)} | {self.requests} ({self.errors} errors) |"
        )


HEADER = (
    "| adapter | protocol | setup | peak RSS above warm (MiB) | non-reader closed | "
    "innocent p50 / p99 alone (ms) | beside the non-reader (ms) | innocent requests |\n"
    "|---|---|---|--:|---|---|---|---|"
)


def run_one(
    adapter: str,
    codec: str,
    upstream: int,
    shared: bool,
    seconds: float,
    workdir: Path,
    *,
    python: str = sys.executable,
    label: str = "",
) -> Outcome:
    """Measure ``adapter`` on ``python`` (named ``label`` in the outcome, else ``adapter``)."""
    proxy = ProxyProcess(config(codec, upstream, shared), adapter, workdir, python)
    try:
        port = proxy.port("listener bench")
        hog_request = (
            b"GET /big.bin HTTP/1.1\r\nHost: hostile\r\n\r\n"
            if codec == "http1"
            else resp_get("isolation:big")
        )
        call: Callable[[socket.socket], None] = http_call if codec == "http1" else redis_call
        with socket.create_connection(("127.0.0.1", port), 30) as innocent:
            for _ in range(50):
                call(innocent)  # warm up
            alone = timed(lambda: call(innocent), seconds / 2)
            base = peak_rss(proxy.proc.pid)
            hog = NonReader(("127.0.0.1", port), hog_request)
            with hog:
                # Its pipeline goes out first and the proxy sees it stop reading: a request
                # sent in that same instant can wait behind it on an ordered connection.
                time.sleep(1.0)
                beside = timed(lambda: call(innocent), seconds)
            grown = (peak_rss(proxy.proc.pid) - base) / MiB
        return Outcome(
            adapter=label or adapter,
            codec=codec,
            setup=SETUPS[shared],
            grown_mib=grown,
            closed=hog.closed,
            counted=proxy.overflows(),
            alone=percentiles(alone),
            beside=percentiles(beside),
            requests=len(beside),
            errors=sum(x != x for x in beside),
        )
    finally:
        proxy.stop()


def timed(call: Callable[[], None], seconds: float) -> list[float]:
    """Latencies of ``call`` repeated for ``seconds``; an error reply is counted as NaN."""
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            call()
        except AnswerError:
            samples.append(float("nan"))
            continue
        samples.append(time.perf_counter() - started)
    return samples


@contextlib.contextmanager
def peers() -> Iterator[tuple[int, int]]:
    import redis

    with nginx_server() as (nginx_port, _), redis_server() as redis_port:
        client = redis.Redis(port=redis_port)
        client.set("isolation:big", BIG_BODY)
        client.set("isolation:small", b"v")
        client.close()
        yield nginx_port, redis_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--adapters", default="asyncio,uvloop,trio,blocking")
    args = parser.parse_args()
    print(HEADER)
    with peers() as (nginx_port, redis_port), tempfile.TemporaryDirectory() as tmp:
        for adapter in args.adapters.split(","):
            for codec, upstream in (("http1", nginx_port), ("redis", redis_port)):
                for shared in (False, True):
                    outcome = run_one(adapter, codec, upstream, shared, args.seconds, Path(tmp))
                    print(outcome.row(), flush=True)


if __name__ == "__main__":
    main()

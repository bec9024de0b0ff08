"""Load drivers: redis-benchmark, wrk and our Thrift/Dubbo load generator, parsed alike.

Each driver runs one bounded load (a fixed request count, or a few seconds for wrk) against
127.0.0.1:port and returns a ``Load``: requests completed, wall seconds, req/s, p50/p99
latency in ms and an error count. A driver that fails raises ``DriverError``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DriverError",
    "Load",
    "loadgen",
    "redis_benchmark",
    "redis_mset_mget",
    "split_problem",
    "wrk",
]

HERE = Path(__file__).resolve().parent


class DriverError(RuntimeError):
    pass


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0


def _run(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise DriverError(f"{argv[0]} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise DriverError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def _combined(outputs: Sequence[str], requests: int, wall: float) -> Load:
    """One ``Load`` from the ``--csv`` outputs of redis-benchmark tests of ``requests`` each:
    req/s is the combined rate (all requests over the summed per-test durations); p50/p99
    are the means of the tests' percentiles."""
    rows = [r for out in outputs for r in csv.DictReader(io.StringIO(out)) if r.get("rps")]
    seconds = sum(requests / float(r["rps"]) for r in rows)
    total = requests * len(rows)
    return Load(
        requests=total,
        seconds=min(seconds, wall),
        rps=total / seconds,
        p50_ms=sum(float(r["p50_latency_ms"]) for r in rows) / len(rows),
        p99_ms=sum(float(r["p99_latency_ms"]) for r in rows) / len(rows),
    )


def _result_rows(out: str, expected: int) -> None:
    found = sum(1 for r in csv.DictReader(io.StringIO(out)) if r.get("rps"))
    if found != expected:
        raise DriverError(f"redis-benchmark printed {found} result rows:\n{out[-500:]}")


def redis_benchmark(
    port: int,
    *,
    pipeline: int,
    requests: int,
    clients: int = 50,
    tls_ca: str | None = None,
    timeout: float = 180,
) -> Load:
    """``redis-benchmark -t ping_mbulk,set,get -c clients -n requests -P pipeline --csv``
    (with ``tls_ca``: over TLS, ``--tls --cacert tls_ca``), as one ``Load`` (``_combined``).
    """
    tests = ("ping_mbulk", "set", "get")
    started = time.perf_counter()
    out = _run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(clients),
            "-n",
            str(requests),
            "-P",
            str(pipeline),
            "-t",
            ",".join(tests),
            "--csv",
            *(["--tls", "--cacert", tls_ca] if tls_ca else []),
        ],
        timeout=timeout,
    )
    _result_rows(out, len(tests))
    return _combined([out], requests, time.perf_counter() - started)


MGET_KEYS = 10  # as many keys as redis-benchmark's own MSET test writes


def redis_mset_mget(port: int, *, requests: int, clients: int = 50) -> Load:
    """``redis-benchmark -t mset`` (10 keys) and an MGET of 10 keys, both with
    ``-r 100000`` so that the keys of one command fall on different shards. req/s and the
    percentiles combine the two as ``redis_benchmark`` does (``_combined``)."""
    common = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients)]
    common += ["-n", str(requests), "-r", "100000", "--csv"]
    mget = ["MGET", *(["key:__rand_int__"] * MGET_KEYS)]
    outputs = []
    started = time.perf_counter()
    for argv in ([*common, "-t", "mset"], [*common, *mget]):
        outputs.append(_run(argv, timeout=180))
        _result_rows(outputs[-1], 1)
    return _combined(outputs, requests, time.perf_counter() - started)


def _resp(*args: str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def _ask(port: int, *commands: tuple[str, ...], lines: int = 0) -> bytes:
    """Send ``commands`` pipelined to 127.0.0.1:port; all the raw reply bytes (read until
    ``lines`` reply lines, at least one per command, have arrived and nothing more comes for
    0.2 s, or for 5 s)."""
    lines = max(lines, len(commands))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(_resp(*c) for c in commands))
        data = b""
        sock.settimeout(0.2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if data.count(b"\r\n") >= lines:
                    break
                continue
            if not chunk:
                break
            data += chunk
        return data


def split_problem(proxy: int, shards: Sequence[int], keys: int = 30) -> str | None:
    """None when the proxy at ``proxy`` splits a multi-key MSET across ``shards``: every key
    is then found by a single-key GET through the proxy and no shard holds them all. Else
    why not (the scenario is skipped with that reason)."""
    names = [f"split-probe:{i}" for i in range(keys)]
    for port in shards:
        _ask(port, ("FLUSHALL",))
    reply = _ask(proxy, ("MSET", *(x for n in names for x in (n, "v-" + n))))
    if not reply.startswith(b"+OK"):
        return f"MSET through the proxy answered {reply[:80]!r}"
    # One exchange for all the GETs: each _ask ends on 0.2 s of silence.
    found = _ask(proxy, *(("GET", n) for n in names), lines=2 * len(names))
    lost = [n for n in names if b"$%d\r\nv-%s\r\n" % (len(n) + 2, n.encode()) not in found]
    held = [_ask(port, ("DBSIZE",)) for port in shards]
    for port in shards:
        _ask(port, ("FLUSHALL",))
    if lost:
        return (
            f"multi-key commands are not split across shards: after an MSET of {keys} keys, "
            f"{len(lost)} were not found by a GET through the proxy (fan-out, issue 16)"
        )
    if f":{keys}\r\n".encode() in held:
        return "every key of the probe landed on one shard: the keys did not spread"
    return None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise DriverError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, path: str, *, seconds: int, clients: int = 50, tls: bool = False) -> Load:
    """``wrk -t1 -c clients -d seconds --latency http://127.0.0.1:port/path`` (``https``
    with ``tls``: wrk does not check the certificate)."""
    out = _run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds}s",
            "--latency",
            f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}",
        ],
        timeout=seconds + 60,
    )
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if done is None or p50 is None or p99 is None:
        raise DriverError(f"cannot read wrk output:\n{out[-800:]}")
    requests = int(done.group(1))
    elapsed = _ms(done.group(2) + done.group(3)) / 1e3
    errors = 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad is not None:
        errors += int(bad.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock is not None:
        errors += sum(int(g) for g in sock.groups())
    return Load(
        requests=requests,
        seconds=elapsed,
        rps=requests / elapsed if elapsed else 0.0,
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        errors=errors,
    )


def loadgen(kind: str, port: int, *, requests: int, clients: int = 50) -> Load:
    """Our closed-loop generator (``loadgen.py``) for ``thrift`` or ``dubbo``."""
    out = _run(
        [
            sys.executable,
            str(HERE / "loadgen.py"),
            kind,
            "--target",
            f"127.0.0.1:{port}",
            "--conns",
            str(clients),
            "--requests",
            str(requests),
        ],
        timeout=150,
    )
    data = json.loads(out.strip().splitlines()[-1])
    return Load(
        requests=int(data["requests"]),
        seconds=float(data["seconds"]),
        rps=float(data["rps"]),
        p50_ms=float(data["p50_ms"]),
        p99_ms=float(data["p99_ms"]),
        errors=int(data["errors"]),
    )

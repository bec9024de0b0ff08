"""Microseconds per request/response round trip through the core, no sockets.

Time is this thread's CPU time (``time.thread_time``), not wall time: on a shared machine
other processes then do not count, as in ``benchmarks/codecs.py``.

Path measured: a client request is decoded, routed and passed through unchanged to a
shared upstream connection; the response is decoded, matched by id and written back.
Codec: the tutorial ``lengthprefixed`` codec. Observer events off (as in production
without an access log), then on. Then pipelined Redis: 16 ``SET`` commands per read through
two routes (one prefix match, one catch-all), 16 ``+OK`` per upstream read, as
``redis-benchmark -P 16`` sends them; microseconds per command.

    python benchmarks/core.py [--requests N]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

from metaprotocol.codecs.lengthprefixed import build_frame
from metaprotocol.core.config import (
    ClusterConfig,
    Config,
    Endpoint,
    ListenerConfig,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
)
from metaprotocol.core.events import Accepted, DataReceived, UpstreamConnected
from metaprotocol.core.proxy import Proxy


def make_proxy(observe: bool) -> Proxy:
    routes = (
        RouteConfig(
            "users",
            RouteAction(cluster="main"),
            RouteMatch((("service", StringMatcher("exact", "users")),)),
        ),
    )
    listener = ListenerConfig("main", "127.0.0.1", 0, "lengthprefixed", routes=routes)
    cfg = Config((listener,), (ClusterConfig("main", (Endpoint("127.0.0.1", 9000),)),))
    proxy = Proxy(cfg, now=0.0, observe=observe)
    proxy.handle(Accepted(1, "main"), 0.0)
    proxy.handle(DataReceived(1, build_frame(1, 1, {"service": "users"})), 0.0)
    proxy.handle(UpstreamConnected(-1), 0.0)
    proxy.handle(DataReceived(-1, build_frame(2, 1)), 0.0)
    return proxy


def _exchanges(proxy: Proxy, request: DataReceived, response: DataReceived, n: int) -> float:
    """CPU seconds for ``n`` request/response exchanges through ``proxy``."""
    handle = proxy.handle
    start = time.thread_time()
    for i in range(n):
        now = i * 1e-6
        handle(request, now)
        handle(response, now)
    return time.thread_time() - start


def round_trips(proxy: Proxy, n: int) -> float:
    request = DataReceived(1, build_frame(1, 7, {"service": "users", "method": "get"}, b"x" * 64))
    response = DataReceived(-1, build_frame(2, 7, {}, b"y" * 64))
    return _exchanges(proxy, request, response, n) / n * 1e6


def make_redis_proxy() -> Proxy:
    routes = (
        RouteConfig(
            "sessions",
            RouteAction(cluster="main"),
            RouteMatch((("key", StringMatcher("prefix", "session:")),)),
        ),
        RouteConfig("default", RouteAction(cluster="main")),
    )
    listener = ListenerConfig("main", "127.0.0.1", 0, "redis", routes=routes)
    cfg = Config((listener,), (ClusterConfig("main", (Endpoint("127.0.0.1", 6379),)),))
    proxy = Proxy(cfg, now=0.0, observe=False)
    proxy.handle(Accepted(1, "main"), 0.0)
    proxy.handle(DataReceived(1, REDIS_SET), 0.0)
    proxy.handle(UpstreamConnected(-1), 0.0)
    proxy.handle(DataReceived(-1, b"+OK\r\n"), 0.0)
    return proxy


REDIS_SET = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n"
PIPELINE = 16


def pipelined_commands(proxy: Proxy, n: int) -> float:
    request = DataReceived(1, REDIS_SET * PIPELINE)
    response = DataReceived(-1, b"+OK\r\n" * PIPELINE)
    return _exchanges(proxy, request, response, n) / (n * PIPELINE) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    parser.add_argument(
        "--json", type=Path, help="also write the results there (benchmarks.e2e reads it)"
    )
    args = parser.parse_args()
    print("| observer events | us per round trip |")
    print("|---|---|")
    record: dict[str, float] = {}
    for observe in (False, True):
        proxy = make_proxy(observe)
        round_trips(proxy, 10_000)  # warm up
        best = min(round_trips(proxy, args.requests) for _ in range(3))
        record["round_trip_observed_us" if observe else "round_trip_us"] = best
        print(f"| {'on' if observe else 'off'} | {best:.2f} |")
    print("goal: <= 3 us per round trip on the compiled build (observer events off; issue 18)")
    redis = make_redis_proxy()
    pipelined_commands(redis, 1_000)  # warm up
    runs = max(1, args.requests // PIPELINE)
    best = min(pipelined_commands(redis, runs) for _ in range(3))
    print(f"\nredis, {PIPELINE} pipelined SETs per read (merged): {best:.2f} us per command")
    record["redis_pipelined_us"] = best
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1))
    if args.profile:
        proxy = make_proxy(False)
        profile = cProfile.Profile()
        profile.runcall(round_trips, proxy, args.requests)
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()

"""CPU microseconds per split Redis command through the core, no sockets.

Path measured: a client's ``MGET`` of 10 keys (or ``MSET`` of 10 pairs) is decoded, split
by the codec per target (``SplitTarget``: route, cluster, the ``ring_hash`` endpoint of each
key), its parts routed and written to three shared upstream connections; each shard's
answer is decoded, and the codec's merge is written back to the client. The route is the
e2e ``redis-shards`` group's (``hash_policy: [key]`` over three ``ring_hash`` shards);
keys are ``key:NNNNNN`` drawn like ``redis-benchmark -r 100000``'s. Same path as
``python -m benchmarks.e2e --groups redis-shards``, without the event loop.

    python benchmarks/fanout.py [--commands N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections.abc import Sequence

from metaprotocol.core.config import (
    ClusterConfig,
    Config,
    Endpoint,
    ListenerConfig,
    RouteAction,
    RouteConfig,
)
from metaprotocol.core.events import Accepted, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.core.proxy import Proxy

KEYS = 10  # as many as redis-benchmark's MSET and the e2e MGET
SHARDS = (6380, 6381, 6382)
VARIANTS = 512  # distinct commands cycled through (each with its own random keys)


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def make_proxy() -> Proxy:
    route = RouteConfig("shards", RouteAction(cluster="shards", hash_policy=("key",)))
    listener = ListenerConfig("bench", "127.0.0.1", 0, "redis", routes=(route,))
    endpoints = tuple(Endpoint("127.0.0.1", port) for port in SHARDS)
    cluster = ClusterConfig("shards", endpoints, lb_policy="ring_hash")
    return Proxy(Config((listener,), (cluster,)), now=0.0, observe=False)


def commands(name: bytes, rng: random.Random) -> list[DataReceived]:
    out = []
    for _ in range(VARIANTS):
        args = [name]
        for _ in range(KEYS):
            args.append(b"key:%012d" % rng.randrange(100_000))
            if name == b"MSET":
                args.append(b"xxx")
        out.append(DataReceived(1, _resp(*args)))
    return out


class Shards:
    """Answers every part the proxy writes to a shard, as redis-server would."""

    def __init__(self, proxy: Proxy, mget: bool) -> None:
        self.proxy = proxy
        self.mget = mget
        self.replies: dict[int, bytes] = {}

    def answer(self, outputs: Sequence[object], now: float) -> None:
        handle = self.proxy.handle
        pending = list(outputs)
        while pending:
            output = pending.pop()
            if isinstance(output, OpenUpstream):
                pending += handle(UpstreamConnected(output.conn), now)
            elif isinstance(output, Write):
                if output.conn < 0:
                    pending += handle(DataReceived(output.conn, self.reply(output.data)), now)
                elif output.data[:1] == b"-":
                    raise RuntimeError(f"the client was answered {output.data!r}")

    def reply(self, part: bytes) -> bytes:
        if not self.mget:
            return b"+OK\r\n"
        keys = int(part[1 : part.index(b"\r\n")]) - 1
        reply = self.replies.get(keys)
        if reply is None:
            reply = self.replies[keys] = b"*%d\r\n" % keys + b"$3\r\nxxx\r\n" * keys
        return reply


def run(proxy: Proxy, shards: Shards, requests: list[DataReceived], n: int) -> float:
    """CPU microseconds per command for ``n`` commands (each answered before the next)."""
    handle = proxy.handle
    answer = shards.answer
    start = time.process_time()
    for i in range(n):
        now = i * 1e-6
        answer(handle(requests[i % VARIANTS], now), now)
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    args = parser.parse_args()
    print(f"| command ({KEYS} keys, 3 ring_hash shards) | CPU us per command (best of 3) |")
    print("|---|--:|")
    for name in (b"MGET", b"MSET"):
        proxy = make_proxy()
        proxy.handle(Accepted(1, "bench"), 0.0)
        shards = Shards(proxy, name == b"MGET")
        requests = commands(name, random.Random(7))
        run(proxy, shards, requests, 1_000)  # warm up, opens the three connections
        best = min(run(proxy, shards, requests, args.commands) for _ in range(3))
        print(f"| {name.decode()} | {best:.1f} |")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run, proxy, shards, requests, args.commands)
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()

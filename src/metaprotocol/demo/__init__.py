"""``metaprotocol demo``: sample upstreams, the embedded proxy and real clients, one report.

The demo is also the embedding showcase. Inside its own asyncio program it

1. starts sample upstreams on free loopback ports (``metaprotocol.demo.upstreams``),
2. builds a config from YAML text with their ports (``metaprotocol.demo.setup``),
3. starts the proxy in the same event loop::

       proxy = Proxy(config, now=loop.time(), random=random.Random(SEED).random)
       handle = await metaprotocol.adapters.asyncio.serve(config, proxy=proxy)
       handle.dispatcher.observers.append(tally.observe)   # watch routes and errors
       port = handle.ports["http"]                          # listeners bound port 0

4. drives Dubbo, Thrift, HTTP/1.1 and Redis clients through it, checking every answer,
5. drains the proxy (``await handle.drain(timeout)``), stops the upstreams and prints what
   happened. Exit status 0 when every check passed, 1 otherwise (the report says what).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from metaprotocol.adapters.asyncio import Handle, serve
from metaprotocol.core.proxy import Proxy
from metaprotocol.demo.kv_clients import drive_http, drive_redis
from metaprotocol.demo.report import CodecResult, ProxyTally, render
from metaprotocol.demo.rpc_clients import drive_dubbo, drive_thrift
from metaprotocol.demo.setup import demo_config
from metaprotocol.demo.upstreams import DEMO_EXTRA, HOST, Upstreams, start_upstreams

__all__ = ["SEED", "main", "run"]

SEED = 2024  # the proxy's randomness (weighted clusters): the same split on every run
TOTAL_TIMEOUT = 45.0  # seconds for the whole demo, start to stop
DRIVER_TIMEOUT = 15.0  # seconds per codec's traffic
DRAIN_TIMEOUT = 2.0


def main() -> int:
    """Run the demo, print the report on stdout; 0 when everything behaved as expected."""
    return asyncio.run(run(sys.stdout))


async def run(out: TextIO) -> int:
    started = time.perf_counter()

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    say(f"metaprotocol demo: sample upstreams and an embedded proxy on {HOST}")
    upstreams = Upstreams()
    tally = ProxyTally()
    results: list[CodecResult] = []
    problems: list[str] = []
    handle: Handle | None = None
    try:
        async with asyncio.timeout(TOTAL_TIMEOUT):
            await start_upstreams(upstreams)
            say("upstreams: " + _describe_upstreams(upstreams))
            for skipped in (upstreams.thrift_skipped, upstreams.redis_skipped):
                if skipped:
                    say(skipped)
            config = demo_config(upstreams)
            loop = asyncio.get_running_loop()
            proxy = Proxy(config, now=loop.time(), random=random.Random(SEED).random)
            handle = await serve(config, proxy=proxy)
            handle.dispatcher.observers.append(tally.observe)
            listeners = ", ".join(f"{name} :{port}" for name, port in handle.ports.items())
            say(f"proxy: metaprotocol.adapters.asyncio.serve(config) -> listeners {listeners}")
            say()
            await _drive_all(handle, proxy, upstreams, results)
    except TimeoutError:
        problems.append(f"the demo did not finish within {TOTAL_TIMEOUT:g}s")
    except Exception as exc:  # a broken setup: say what, still stop everything below
        problems.append(f"setup failed: {type(exc).__name__}: {exc}")
    finally:
        stopped = await _stop(handle, upstreams)

    for line in render(results, tally, {} if handle is None else handle.addresses):
        say(line)
    if handle is not None and handle.dispatcher.crashes:
        problems.append(f"the proxy raised {len(handle.dispatcher.crashes)} time(s): "
                        f"{handle.dispatcher.crashes[0]!r}")  # fmt: skip
    unexpected = sum(len(r.unexpected) for r in results)
    if unexpected:
        problems.append(f"{unexpected} unexpected result(s): see the UNEXPECTED lines above")
    say(stopped)
    elapsed = time.perf_counter() - started
    if problems:
        for problem in problems:
            say(f"FAILED: {problem}")
        return 1
    codecs = sum(1 for r in results if r.skipped is None)
    say(f"ok: every check passed ({codecs} codecs) in {elapsed:.1f}s")
    left_out = [r.codec for r in results if r.skipped is not None]
    if left_out:
        say(f"skipped: {', '.join(left_out)} (see why above; {DEMO_EXTRA} brings the clients)")
    return 0


async def _drive_all(
    handle: Handle, proxy: Proxy, upstreams: Upstreams, results: list[CodecResult]
) -> None:
    """Drive each codec in turn, listing its result first (so a timeout still reports)."""
    ports = handle.ports
    dubbo, thrift, http, redis = (
        CodecResult(name) for name in ("dubbo", "thrift", "http", "redis")
    )
    results += [dubbo, thrift, http, redis]

    await _guard(dubbo, lambda: drive_dubbo(dubbo, HOST, ports["dubbo"]))
    answered = proxy.stats.counter("heartbeat", (("listener", "dubbo"),))
    dubbo.check(answered == 1, f"the proxy counted {answered} heartbeats answered, expected 1")

    if upstreams.thrift_skipped:
        thrift.skipped = upstreams.thrift_skipped
    else:
        server_a = upstreams.thrift["thrift-a"]
        await _guard(
            thrift,
            lambda: asyncio.to_thread(drive_thrift, thrift, HOST, ports["thrift"], server_a),
        )
    await _guard(http, lambda: asyncio.to_thread(drive_http, http, HOST, ports["http"]))
    over = proxy.stats.counter("local_ratelimit_over_limit", (("listener", "http"),))
    seen = http.expected["rate-limited (429 from the proxy)"]
    http.check(over == seen, f"the proxy counted {over} over-limit requests, the client {seen}")

    if upstreams.redis_skipped:
        redis.skipped = upstreams.redis_skipped
    elif upstreams.redis_failed:
        redis.unexpected.append(upstreams.redis_failed)
    else:
        primary, sessions = upstreams.redis["main"].address, upstreams.redis["sessions"].address
        await _guard(
            redis,
            lambda: asyncio.to_thread(drive_redis, redis, HOST, ports["redis"], primary, sessions),
        )


async def _guard(result: CodecResult, drive: Callable[[], Awaitable[None]]) -> None:
    """Run one codec's traffic with a deadline; an exception becomes an unexpected result."""
    try:
        async with asyncio.timeout(DRIVER_TIMEOUT):
            await drive()
    except TimeoutError:
        result.unexpected.append(f"no progress within {DRIVER_TIMEOUT:g}s")
    except Exception as exc:
        result.unexpected.append(f"{type(exc).__name__}: {exc}")


async def _stop(handle: Handle | None, upstreams: Upstreams) -> str:
    parts: list[str] = []
    if handle is not None:
        try:
            await handle.drain(timeout=DRAIN_TIMEOUT)
        except Exception as exc:
            parts.append(f"proxy drain failed ({type(exc).__name__}: {exc})")
        else:
            parts.append("proxy drained and closed")
    count = (
        len(upstreams.dubbo) + len(upstreams.thrift) + len(upstreams.http) + len(upstreams.redis)
    )
    await upstreams.aclose()
    parts.append(f"{count} sample upstreams stopped")
    return "stopped: " + ", ".join(parts)


def _describe_upstreams(upstreams: Upstreams) -> str:
    parts = [f"dubbo {v} :{upstreams.dubbo_address(v)[1]}" for v in upstreams.dubbo]
    parts += [f"thrift {n} :{s.address[1]}" for n, s in upstreams.thrift.items()]
    parts += [f"http {n} :{s.address[1]}" for n, s in upstreams.http.items()]
    parts += [f"redis {n} :{s.port}" for n, s in upstreams.redis.items()]
    return ", ".join(parts)

"""Isolation end to end: a client that never reads its replies, against real peers.

(a) Pipelining GETs of a 1 MiB answer (HTTP from nginx, Redis from redis-server) without
reading keeps the proxy's resident memory within base + ``output_buffer_limit`` + a small
constant; the client is closed and counted in ``downstream_cx_output_overflow``; a second
client sharing the upstream connection is served meanwhile. The proxy runs as its own
process (``metaprotocol run``) so that its memory is what /proc reports for it.

(b) Dubbo and Redis: a non-reader beside an innocent client on the same cluster (one shared
upstream connection): the innocent client gets every answer, none timing out, with latency
comparable to its own baseline measured in the same test.
"""

from __future__ import annotations

import contextlib
import re
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import redis
import yaml

from metaprotocol.core.events import Event, WriteBufferGrew
from metaprotocol.core.flow import Reason
from metaprotocol.core.outputs import Output
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.stats import Stats
from metaprotocol.samples.dubbo_provider import ECHO, GREETINGS
from metaprotocol.testing.hostile import NonReader, peak_rss
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.dubbo_frames import DubboClient, request_frame
from tests.e2e.servers import (
    BIG_BODY,
    DEADLINE,
    MiniServer,
    dubbo_provider,
    proxy_config,
    recv_exactly,
    scrape_admin,
    wait_until,
)
from tests.e2e.test_dubbo import _close_client_connection
from tests.e2e.test_lifecycle import ProxyProcess

MiB = 1 << 20
OUTPUT_LIMIT = 4 * MiB
# What the proxy may hold on top of the client's output buffer: answers read from the
# upstream in one loop iteration before they are flushed (uvloop reads up to 2 MiB per
# iteration), an answer being decoded and its copy on the way out, read buffers, and the
# allocator keeping freed blocks. benchmarks/isolation.py measured 4-24 MiB on the adapters.
SLACK = 32 * MiB
HOSTILE_SECONDS = 4.0
# Each non-reader connection makes the peer build max_pending_requests big answers: a
# smaller number keeps the peer's work (and the test's time) small on a loaded machine.
LIMITS = {"output_buffer_limit": "4MiB", "max_pending_requests": 128}
# Only GETs are idempotent: when a closed non-reader leaves answers nobody reads ahead of the
# other client's on their shared connection, the other client's GETs may go out again on a
# fresh connection instead of waiting behind them.
RESEND = {
    codec: {"attempts": 0, "non_idempotent": {"metadata": {key: {"exact": "GET", "invert": True}}}}
    for codec, key in (("http1", ":method"), ("redis", "command"))
}


# -- (a) memory: the proxy in its own process --------------------------------------------------


def _listening_port(process: ProxyProcess, what: str) -> int:
    """The port the proxy's log says ``what`` listens on."""
    return int(process.wait_for_line(rf"{what} on 127\.0\.0\.1:(\d+)").group(1))


@contextlib.contextmanager
def _proxy_process(
    codec: str, upstream: int, adapter: str, tmp_path: Path
) -> Iterator[tuple[ProxyProcess, int, tuple[str, int]]]:
    config = {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [
            {"name": "hostile", "address": "127.0.0.1:0", "codec": codec,
             "max_message_size": "2MiB", **LIMITS,
             "routes": [{"name": "all", "route": {"cluster": "peer", "retries": RESEND[codec]}}]}
        ],
        # One upstream connection: the non-reader shares it with the other client, so its
        # answers must be buffered for it (up to its limit) rather than the reading paused.
        "clusters": [
            {"name": "peer", "endpoints": [f"127.0.0.1:{upstream}"],
             "max_connections_per_endpoint": 1}
        ],
    }  # fmt: skip
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    process = ProxyProcess(path, adapter, "--log-level", "info")
    try:
        hostile = _listening_port(process, "listener hostile")
        yield process, hostile, ("127.0.0.1", _listening_port(process, "admin"))
    finally:
        process.stop()


def _recv_head(sock: socket.socket) -> bytes:
    """An HTTP response head, read a byte at a time so that none of the body is taken."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise AssertionError(f"closed after {bytes(head)!r}")
        head += byte
    return bytes(head)


def _overflows(admin: tuple[str, int]) -> int:
    text = scrape_admin(admin)
    found = re.search(r"^\S*downstream_cx_output_overflow\S* (\d+)", text, re.MULTILINE)
    assert found is not None, text
    return int(found.group(1))


def _memory_bound_holds(
    pid: int,
    admin: tuple[str, int],
    hog: NonReader,
    served: Callable[[], None],
) -> None:
    """Run ``served`` (one checked request of the innocent client) in a loop while ``hog``
    presses for ``HOSTILE_SECONDS``; then check memory, closes and counting."""
    for _ in range(3):
        served()  # warm: the innocent client's path and one 1 MiB answer are in memory
    base = peak_rss(pid)
    answered = 0
    with hog:
        end = time.monotonic() + HOSTILE_SECONDS
        while time.monotonic() < end or not hog.closed or answered < 3:
            served()
            answered += 1
            assert time.monotonic() < end + 3 * DEADLINE, "the non-reader was never closed"
    grown = peak_rss(pid) - base
    assert grown <= OUTPUT_LIMIT + SLACK, f"RSS grew {grown / MiB:.1f} MiB"
    assert hog.sent > 0
    assert _overflows(admin) >= hog.closed


def test_http_non_reader_is_bounded_closed_and_counted(
    adapter: str, nginx: tuple[int, Path], tmp_path: Path
) -> None:
    nginx_port, _ = nginx
    with _proxy_process("http1", nginx_port, adapter, tmp_path) as (process, port, admin):
        get_big = b"GET /big.bin HTTP/1.1\r\nHost: hostile\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), DEADLINE) as innocent:

            def served() -> None:
                innocent.sendall(b"GET /big.bin HTTP/1.1\r\nHost: innocent\r\n\r\n")
                head = _recv_head(innocent)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert recv_exactly(innocent, len(BIG_BODY)) == BIG_BODY

            hog = NonReader(("127.0.0.1", port), get_big)
            _memory_bound_holds(process.proc.pid, admin, hog, served)


def test_redis_non_reader_is_bounded_closed_and_counted(
    adapter: str, redis_port: int, tmp_path: Path
) -> None:
    key = f"isolation:big:{adapter}"
    redis.Redis(port=redis_port).set(key, BIG_BODY)
    with _proxy_process("redis", redis_port, adapter, tmp_path) as (process, port, admin):
        get_big = _resp_get(key)
        # A plain RESP2 client: redis-py may ask for RESP3, whose upstream connections are a
        # pool of their own, and this test wants the non-reader's connection shared.
        with socket.create_connection(("127.0.0.1", port), DEADLINE) as innocent:

            def served() -> None:
                innocent.sendall(get_big)
                assert recv_exactly(innocent, len(big_reply)) == big_reply

            big_reply = b"$%d\r\n%s\r\n" % (len(BIG_BODY), BIG_BODY)
            hog = NonReader(("127.0.0.1", port), get_big)
            _memory_bound_holds(process.proc.pid, admin, hog, served)


def _resp_get(key: str) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode())


# -- (a') the bound itself: what is buffered for the non-reader when it is closed --------------


class _BufferProbe:
    """The proxy's core, and the largest write buffer each client connection was reported
    to have (``WriteBufferGrew``: the adapter's own buffer, after each flush above the high
    watermark)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.largest: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proxy, name)

    @property
    def stats(self) -> Stats:
        return self.proxy.stats

    @property
    def drained(self) -> bool:
        return self.proxy.drained

    def handle(self, event: Event, now: float) -> list[Output]:
        if isinstance(event, WriteBufferGrew) and event.conn in self.proxy.downstreams:
            self.largest[event.conn] = max(self.largest.get(event.conn, 0), event.size)
        return self.proxy.handle(event, now)


def test_a_non_reader_is_closed_within_one_answer_of_its_limit(
    adapter: str, redis_port: int
) -> None:
    """Sharing its upstream connection with a client that reads, a non-reader's 1 MiB
    answers fill its buffer in the proxy: it is closed with at most output_buffer_limit plus
    one answer buffered, on every adapter. (uvloop reads megabytes of answers a loop
    iteration: counted only at each flush, the buffer reached 8-11 MiB with a 4 MiB limit.)"""
    key = f"isolation:big-c:{adapter}"
    redis.Redis(port=redis_port).set(key, BIG_BODY)
    routes = [{"name": "all", "route": {"cluster": "redis", "retries": RESEND["redis"]}}]
    config = proxy_config(
        "redis",
        {"redis": [redis_port]},
        routes,
        listener={**LIMITS, "max_message_size": "2MiB"},
        cluster_options={"max_connections_per_endpoint": 1},
    )
    probe = _BufferProbe(Proxy(config, now=time.monotonic()))
    big_reply = b"$%d\r\n%s\r\n" % (len(BIG_BODY), BIG_BODY)
    with start_proxy(config, adapter, proxy=probe) as running:
        address = ("127.0.0.1", running.ports["redis"])
        with (
            socket.create_connection(address, DEADLINE) as innocent,
            NonReader(address, _resp_get(key)) as hog,
        ):
            end = time.monotonic() + 3 * DEADLINE
            while hog.closed < 3:  # its connections, one after another
                innocent.sendall(_resp_get(key))
                assert recv_exactly(innocent, len(big_reply)) == big_reply
                assert time.monotonic() < end, "the non-reader was not closed three times"
        largest = running.call(lambda: dict(probe.largest))
        overflows = running.call(
            lambda: probe.stats.counter("downstream_cx_output_overflow", (("listener", "redis"),))
        )
    assert overflows >= 3
    assert largest, "no client went above its write high watermark"
    assert max(largest.values()) <= OUTPUT_LIMIT + len(big_reply), {
        conn: round(size / MiB, 2) for conn, size in largest.items()
    }


# -- (b) latency: a non-reader beside an innocent client on one shared upstream connection ----


def _latencies(call: Callable[[], None], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _slow_reader_seen(running: RunningProxy) -> bool:
    """Whether the proxy holds a client above its write high watermark right now."""
    proxy = running.proxy
    assert isinstance(proxy, Proxy)
    return any(Reason.OWN_WRITE_BUFFER_HIGH in ds.gate.reasons for ds in proxy.downstreams.values())


def _innocent_keeps_its_pace(
    call: Callable[[], None], hog: NonReader, running: RunningProxy, count: int
) -> None:
    """Every call succeeds (a timeout raises) with and without ``hog``; the median under
    pressure stays within a generous factor of the baseline measured just before."""
    for _ in range(20):
        call()  # warm up
    baseline = statistics.median(_latencies(call, count))
    with hog:
        # From the moment the proxy sees a client not reading. (A request sent earlier may
        # be pipelined behind the non-reader's on an ordered connection, as on any shared
        # pipelined connection.)
        wait_until(
            partial(running.call, partial(_slow_reader_seen, running)),
            timeout=3 * DEADLINE,
            message="the proxy to see the non-reader",
        )
        end = time.monotonic() + HOSTILE_SECONDS
        hostile: list[float] = []
        while time.monotonic() < end:
            hostile += _latencies(call, 10)
    # Two cores shared with the non-reader, the proxy, the peer and other test runs: the
    # median may move with scheduling by hundreds of milliseconds (a 50 ms allowance failed
    # at load 11), but a paused shared connection costs every call the request timeout
    # (30 s by default; ``call`` gives up after DEADLINE, 10 s). Half a second tells them apart.
    assert statistics.median(hostile) <= max(10 * baseline, baseline + 0.5), (baseline, hostile)


def test_dubbo_non_reader_does_not_stall_an_innocent_client(adapter: str) -> None:
    listener = {**LIMITS, "max_message_size": "1MiB"}
    with dubbo_provider() as provider:
        config = proxy_config("dubbo", {"provider": [provider]}, listener=listener)
        with start_proxy(config, adapter) as running:
            host = f"127.0.0.1:{running.ports['dubbo']}"
            client = DubboClient(GREETINGS, group="", version="1.0.0", host=host)

            def call() -> None:
                assert client.call("sayHi", "ada", timeout=DEADLINE) == "hi, ada"

            # (dubbo_ssl writes a string as one chunk: keep it under 32 Ki characters)
            big = request_frame(ECHO, "1.0.0", "echo", ["x" * 30_000])
            hog = NonReader(("127.0.0.1", running.ports["dubbo"]), big)
            try:
                _innocent_keeps_its_pace(call, hog, running, 50)
            finally:
                _close_client_connection(host)


def test_redis_non_reader_does_not_stall_an_innocent_client(adapter: str, redis_port: int) -> None:
    key = f"isolation:big-b:{adapter}"
    small = f"isolation:small-b:{adapter}"
    peer = redis.Redis(port=redis_port)
    peer.set(key, BIG_BODY)
    peer.set(small, b"v")
    config = proxy_config(
        "redis",
        {"redis": [redis_port]},
        listener={**LIMITS, "max_message_size": "2MiB"},
    )
    with start_proxy(config, adapter) as running:
        address = ("127.0.0.1", running.ports["redis"])
        with socket.create_connection(address, DEADLINE) as innocent:  # RESP2, as the hog

            def call() -> None:
                innocent.sendall(_resp_get(small))
                assert recv_exactly(innocent, 7) == b"$1\r\nv\r\n"

            _innocent_keeps_its_pace(call, NonReader(address, _resp_get(key)), running, 50)


# -- (c) a non-reader alone on its upstream connection: the proxy stops reading the upstream --

STALL = 2.0  # seconds a write of the upstream makes no progress: the proxy stopped reading it


class _StallingUpstream:
    """A Redis stand-in answering each ``request`` with ``reply``, one blocking write after
    another; ``stalled`` is set once a write made no progress for ``STALL`` seconds while
    answers were still owed (the proxy no longer reads the connection)."""

    def __init__(self, request: bytes, reply: bytes) -> None:
        self.request = request
        self.reply = reply
        self.written = 0
        self.stalled = threading.Event()
        self.errors: list[bytes] = []

    def __call__(self, conn: socket.socket) -> None:
        conn.settimeout(STALL)
        pending = b""
        while True:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            pending += data
            count = len(pending) // len(self.request)
            if pending[: count * len(self.request)] != self.request * count:
                self.errors.append(pending[:200])  # not the GET the non-reader sends
                return
            pending = pending[count * len(self.request) :]
            for _ in range(count):
                self._write(conn, memoryview(self.reply))

    def _write(self, conn: socket.socket, data: memoryview) -> None:
        while data:
            try:
                sent = conn.send(data)
            except TimeoutError:
                self.stalled.set()
                continue
            self.written += sent
            data = data[sent:]


def test_the_upstream_of_only_a_non_reader_is_no_longer_read(adapter: str) -> None:
    """A client that never reads, alone on its upstream connection: past its write high
    watermark the proxy stops reading that connection (ReadDisable), so the upstream's
    writes block and its answers wait there, not in the proxy. (Without the ReadDisable
    the proxy reads them all, closing the client as it overflows, and the upstream's
    writes never block.)"""
    request = _resp_get("big")
    upstream = _StallingUpstream(request, b"$%d\r\n%s\r\n" % (len(BIG_BODY), BIG_BODY))
    with MiniServer(upstream) as server:
        config = proxy_config(
            "redis",
            {"redis": [server.port]},
            listener={**LIMITS, "max_message_size": "2MiB"},
            cluster_options={"max_connections_per_endpoint": 1},
        )
        with (
            start_proxy(config, adapter) as running,
            NonReader(("127.0.0.1", running.ports["redis"]), request) as hog,
        ):
            wait_until(upstream.stalled.is_set, 3 * DEADLINE, "the upstream's writes to block")
            assert not upstream.errors, upstream.errors
            assert hog.sent > 0
            paused = running.call(
                lambda: running.proxy.stats.counter(
                    "upstream_flow_control_paused", (("cluster", "redis"),)
                )
            )
            assert paused >= 1

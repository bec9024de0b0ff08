"""Every IO adapter over real loopback sockets, driven by a fake core (tests/adapters/fakecore)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.adapters.dispatch import READ_CHUNK
from metaprotocol.core.config import AdminConfig, Config, ListenerConfig
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    ExternalCallCompleted,
    UpstreamConnectFailed,
    WriteBufferGrew,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import ReadDisable, ReadEnable
from metaprotocol.testing.serving import ADAPTERS, RunningProxy, start_proxy
from tests.adapters.fakecore import FakeCore

T = TypeVar("T")
TIMEOUT = 10.0


def _config(upstream: str = "127.0.0.1:1") -> Config:
    listeners = tuple(
        ListenerConfig(name=name, host="127.0.0.1", port=0, codec="fake", routes=())
        for name in ("echo", "sink", "fwd")
    )
    return Config(
        listeners=listeners,
        clusters=(),
        admin=AdminConfig(host="127.0.0.1", port=0),
        raw={"upstream": upstream, "note": 'quote " and \\ backslash'},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(params=[a for a in ADAPTERS])
def adapter(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "uvloop":
        pytest.importorskip("uvloop")
    return name


@pytest.fixture
def upstream_server() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(TIMEOUT)
    yield server
    server.close()


def _start(adapter: str, config: Config) -> tuple[FakeCore, object]:
    core = FakeCore(config)
    return core, start_proxy(config, adapter, proxy=core)


def _wait(running: RunningProxy, what: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Poll ``what`` in the proxy's thread until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        value = running.call(what)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)


def _connect(running: RunningProxy, listener: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", running.ports[listener]), TIMEOUT)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def _recv_until_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := sock.recv(65536):
        buf += chunk
    return bytes(buf)


def _accepted(core: FakeCore, listener: str) -> list[int]:
    return [e.conn for _, e in core.events if isinstance(e, Accepted) and e.listener == listener]


def test_bytes_flow_both_ways_and_peer_close_is_reported(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "echo")
        (conn,) = _wait(running, lambda: _accepted(core, "echo"))
        for payload in (b"hello", b"x" * 100_000):
            sock.sendall(payload)
            assert _recv_exactly(sock, len(payload)) == payload
        sock.close()
        _wait(running, lambda: any(isinstance(e, Closed | EofReceived) for _, e in core.events))
        assert core.received[conn] == 100_005


def test_half_close_keeps_the_write_side_open(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "echo")
        sock.sendall(b"abc")
        assert _recv_exactly(sock, 3) == b"abc"
        sock.shutdown(socket.SHUT_WR)
        assert _recv_until_eof(sock) == b"<eof>"
        sock.close()


def test_core_close_flushes_then_closes_and_abort_does_not_flush(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "echo")
        sock.sendall(b"close")
        assert _recv_until_eof(sock) == b"bye"
        sock.close()
        sock = _connect(running, "echo")
        sock.sendall(b"abort")
        with contextlib.suppress(ConnectionResetError):
            assert _recv_until_eof(sock) == b""
        sock.close()


def test_upstream_forwarding_both_ways(adapter: str, upstream_server: socket.socket) -> None:
    config = _config(f"127.0.0.1:{upstream_server.getsockname()[1]}")
    core = FakeCore(config)
    with start_proxy(config, adapter, proxy=core) as running:
        client = _connect(running, "fwd")
        client.sendall(b"ping")
        upstream, _ = upstream_server.accept()
        upstream.settimeout(TIMEOUT)
        assert _recv_exactly(upstream, 4) == b"ping"
        upstream.sendall(b"pong")
        assert _recv_exactly(client, 4) == b"pong"
        upstream.close()
        assert _recv_until_eof(client) == b""
        client.close()


def test_upstream_connect_failure_is_reported(adapter: str) -> None:
    config = _config(f"127.0.0.1:{_free_port()}")
    core = FakeCore(config)
    with start_proxy(config, adapter, proxy=core) as running:
        client = _connect(running, "fwd")
        assert _recv_until_eof(client) == b"connect failed"
        client.close()
        failed = [e for _, e in core.events if isinstance(e, UpstreamConnectFailed)]
        assert len(failed) == 1 and failed[0].conn < 0 and failed[0].error


def test_read_disable_stops_reading_and_bounds_buffering(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "sink")
        sock.sendall(b"x")
        (conn,) = _wait(running, lambda: _accepted(core, "sink"))
        _wait(running, lambda: core.received.get(conn) == 1)
        running.call(lambda: running.dispatcher.apply([ReadDisable(conn)]))
        sock.setblocking(False)
        sent, limit, chunk = 0, 256 << 20, b"y" * 65536
        while sent < limit:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                break
        assert sent < limit, "the proxy kept reading while read-disabled"
        time.sleep(0.05)  # give a misbehaving adapter the chance to read more
        after = running.call(lambda: core.received[conn]) - 1
        assert after <= 2 * READ_CHUNK
        running.call(lambda: running.dispatcher.apply([ReadEnable(conn)]))
        _wait(running, lambda: core.received[conn] == sent + 1)
        sock.close()


def test_write_buffer_watermarks_are_reported(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", running.ports["echo"]))
        size = 16 << 20
        sock.sendall(b"flood:%d" % size)

        def kinds() -> list[type]:
            return [
                type(e) for _, e in core.events if isinstance(e, WriteBufferHigh | WriteBufferLow)
            ]

        assert _wait(running, kinds) == [WriteBufferHigh]
        assert _recv_exactly(sock, size) == b"x" * size
        assert _wait(running, lambda: WriteBufferLow in kinds() and kinds()) == [
            WriteBufferHigh,
            WriteBufferLow,
        ]
        sock.close()


def test_write_buffer_size_is_reported_while_above_the_high_watermark(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", running.ports["echo"]))
        size = 16 << 20
        sock.sendall(b"flood:%d" % size)

        def sizes() -> list[int]:
            return [e.size for _, e in core.events if isinstance(e, WriteBufferGrew)]

        # Nothing is read yet: most of the flood sits in the adapter's buffer, as reported.
        assert max(_wait(running, sizes)) > size // 2
        assert _recv_exactly(sock, size) == b"x" * size

        def order() -> list[type]:
            flow = (WriteBufferHigh, WriteBufferGrew, WriteBufferLow)
            return [type(e) for _, e in core.events if isinstance(e, flow)]

        _wait(running, lambda: WriteBufferLow in order())
        kinds = running.call(order)
        assert kinds[0] is WriteBufferHigh and kinds[-1] is WriteBufferLow
        assert set(kinds[1:-1]) == {WriteBufferGrew}  # only between the two crossings
        sock.close()


def test_timer_fires_time_passed_at_the_deadline(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "echo")
        started = time.monotonic()
        sock.sendall(b"timer:0.2")
        assert _recv_exactly(sock, 5) == b"fired"
        assert time.monotonic() - started >= 0.19
        ((now, deadline),) = running.call(lambda: list(core.fired))
        assert deadline <= now < deadline + 1.0
        sock.close()


def _get(address: tuple[str, int], path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read().decode()
    finally:
        conn.close()


def test_admin_endpoint(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        assert running.admin_address is not None
        sock = _connect(running, "echo")
        sock.sendall(b"hello")
        assert _recv_exactly(sock, 5) == b"hello"
        assert _get(running.admin_address, "/ready")[::2] == (200, "ready\n")
        status, ctype, body = _get(running.admin_address, "/stats/prometheus")
        assert status == 200 and ctype.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        (cx,) = families["metaprotocol_cx"].samples
        assert cx.name == "metaprotocol_cx_total" and cx.labels == {"listener": "echo"}
        assert cx.value == 1
        hist = families["metaprotocol_echo_bytes"]
        assert hist.type == "histogram"
        count = [s for s in hist.samples if s.name.endswith("_count")]
        assert count[0].value == 1
        status, ctype, body = _get(running.admin_address, "/config_dump")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == dict(_config().raw)
        assert _get(running.admin_address, "/nope")[0] == 404
        running.call(lambda: setattr(running.serving, "draining", True))
        assert _get(running.admin_address, "/ready")[::2] == (503, "draining\n")
        sock.close()


def test_received_data_is_attributed_to_the_right_connections(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        socks = [_connect(running, "echo") for _ in range(5)]
        for i, s in enumerate(socks):
            s.sendall(b"%d" % i * (i + 1))
        for i, s in enumerate(socks):
            assert _recv_exactly(s, i + 1) == b"%d" % i * (i + 1)
        ids = _wait(running, lambda: _accepted(core, "echo"))
        assert len(set(ids)) == 5 and all(c > 0 for c in ids)
        data = running.call(lambda: [e for _, e in core.events if isinstance(e, DataReceived)])
        assert sorted(len(e.data) for e in data) == [1, 2, 3, 4, 5]
        for s in socks:
            s.close()


def test_drain_closes_idle_connections_and_stops_accepting(adapter: str) -> None:
    core = FakeCore(_config())
    with start_proxy(_config(), adapter, proxy=core) as running:
        sock = _connect(running, "echo")
        sock.sendall(b"hi")
        assert _recv_exactly(sock, 2) == b"hi"
        started = time.monotonic()
        running.drain(5.0)
        assert time.monotonic() - started < 4.0  # drained early: the fake core closed everything
        assert _recv_until_eof(sock) == b""
        sock.close()
        assert core.draining and core.drained
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running.ports["echo"]), TIMEOUT).close()


def _listeners(**ports: int) -> Config:
    """Listeners named after the fake core's behaviours (echo, sink), on the given ports."""
    return Config(
        listeners=tuple(
            ListenerConfig(name=name, host="127.0.0.1", port=port, codec="fake", routes=())
            for name, port in ports.items()
        ),
        clusters=(),
    )


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def _until(condition: Callable[[], bool]) -> None:
    end = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < end, "condition not met"
        time.sleep(0.005)


def test_reload_adds_moves_and_removes_listeners(adapter: str) -> None:
    start = _listeners(echo=0)
    core = FakeCore(start)
    with start_proxy(start, adapter, proxy=core) as running:
        kept = _connect(running, "echo")
        _wait(running, lambda: _accepted(core, "echo"))
        echo_port = running.ports["echo"]
        running.reload(_listeners(echo=0, sink=0))  # adds sink; echo stays where it is
        assert running.ports["echo"] == echo_port
        _connect(running, "sink").close()
        _wait(running, lambda: _accepted(core, "sink"))
        moved = _free_port()
        final = _listeners(sink=moved)  # sink moves, echo goes
        running.reload(final)
        assert running.addresses == {"sink": ("127.0.0.1", moved)}
        _connect(running, "sink").close()
        _wait(running, lambda: len(_accepted(core, "sink")) == 2)
        _until(lambda: _refused(echo_port))
        kept.sendall(b"still served")  # connections accepted before stay (the core decides)
        assert _recv_exactly(kept, 12) == b"still served"
        kept.close()
        assert core.config is final


def test_reload_that_cannot_bind_changes_nothing(adapter: str) -> None:
    start = _listeners(echo=0)
    core = FakeCore(start)
    with (
        start_proxy(start, adapter, proxy=core) as running,
        socket.create_server(("127.0.0.1", 0)) as busy,
    ):
        taken = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"listener 'sink' on 127.0.0.1:{taken}"):
            running.reload(_listeners(echo=0, sink=taken))
        assert core.config is start
        assert list(running.addresses) == ["echo"]
        sock = _connect(running, "echo")
        sock.sendall(b"hi")
        assert _recv_exactly(sock, 2) == b"hi"
        sock.close()


def test_a_periodic_job_runs_off_the_loop_and_its_outcome_reaches_the_core(adapter: str) -> None:
    core = FakeCore(_config())
    loop_threads: list[str] = []
    job_threads: list[str] = []

    def job() -> str:
        job_threads.append(threading.current_thread().name)
        return "resolved"

    def event(result: str | None, error: str) -> ExternalCallCompleted:
        loop_threads.append(threading.current_thread().name)
        return ExternalCallCompleted(77, result, error)

    with start_proxy(_config(), adapter, proxy=core) as running:
        loop_thread = running.call(lambda: threading.current_thread().name)
        running.call(lambda: running.serving.every(0.01, job, event, name="discover"))
        _wait(running, lambda: [e for _, e in core.events if isinstance(e, ExternalCallCompleted)])
        fed = running.call(
            lambda: [e for _, e in core.events if isinstance(e, ExternalCallCompleted)]
        )
    assert fed[0] == ExternalCallCompleted(77, "resolved", "")
    assert job_threads[0] == "discover" and loop_threads[0] == loop_thread


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_moved_listener_serves_the_clients_waiting_in_its_backlog(backend: str) -> None:
    """A client the kernel accepted into the old listener's backlog before a reload moved
    the listener is served, not reset (anyio adapter; the loop does not run between the
    connect and the reload, so the client is still waiting when the listener closes)."""
    import anyio

    from metaprotocol.adapters import anyio as anyio_adapter

    start = _listeners(echo=0)
    core = FakeCore(start)

    async def main() -> bytes:
        async with anyio_adapter.serve(start, proxy=core, admin=False) as handle:
            with socket.create_connection(handle.addresses["echo"], TIMEOUT) as waiting:
                handle.reload(_listeners(echo=_free_port()))
                waiting.sendall(b"from the backlog")
                return await anyio.to_thread.run_sync(_recv_exactly, waiting, 16)

    assert anyio.run(main, backend=backend) == b"from the backlog"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_moved_listener_serves_its_backlog_on_the_asyncio_adapter(loop: str) -> None:
    """The same on the asyncio adapter, on asyncio's loop and on uvloop's: the reload runs
    before the loop gets to accept the waiting client."""
    import asyncio

    from metaprotocol.adapters import asyncio as asyncio_adapter

    start = _listeners(echo=0)
    core = FakeCore(start)

    async def main() -> bytes:
        handle = await asyncio_adapter.serve(start, proxy=core, admin=False)
        try:
            with socket.create_connection(handle.addresses["echo"], TIMEOUT) as waiting:
                handle.reload(_listeners(echo=_free_port()))
                waiting.sendall(b"from the backlog")
                running = asyncio.get_running_loop()
                return await running.run_in_executor(None, _recv_exactly, waiting, 16)
        finally:
            await handle.close()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        assert uvloop.run(main()) == b"from the backlog"
    else:
        assert asyncio.run(main()) == b"from the backlog"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_plain_tcp_runs_on_its_socket_under_trio_only(backend: str) -> None:
    """Under trio a plain TCP connection is read and written on its socket
    (adapters/trio_sockets.py); under asyncio through anyio's stream. Both echo 8 MiB, more
    than the kernel takes at once, so what it leaves waits for the writer task."""
    import anyio

    from metaprotocol.adapters import anyio as anyio_adapter

    start = _listeners(echo=0)
    payload = bytes(range(256)) * (32 * 1024)

    async def main() -> tuple[bytes, list[bool]]:
        async with anyio_adapter.serve(start, proxy=FakeCore(start), admin=False) as handle:
            with socket.create_connection(handle.addresses["echo"], TIMEOUT) as client:
                sender = threading.Thread(target=client.sendall, args=(payload,))
                sender.start()
                echoed = await anyio.to_thread.run_sync(_recv_exactly, client, len(payload))
                sender.join()
                on_socket = [c.sock is not None for c in handle._server.io.conns.values()]
        return echoed, on_socket

    echoed, on_socket = anyio.run(main, backend=backend)
    assert echoed == payload
    assert on_socket == [backend == "trio"]

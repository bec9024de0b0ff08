"""The demo's sample upstream servers on free loopback ports, and stopping them again.

Two Dubbo providers (one per service version), two Thrift Calculator servers, two HTTP
servers (the 80/20 split) and, when ``redis-server`` is installed, two Redis servers (a main
one and one for ``session:*`` keys). Everything started here is stopped by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TYPE_CHECKING

from metaprotocol.samples import dubbo_provider
from metaprotocol.samples.http_server import HttpServer

if TYPE_CHECKING:
    from metaprotocol.samples.thrift_server import ThriftServer

__all__ = [
    "DEMO_EXTRA",
    "HOST",
    "RedisServer",
    "Upstreams",
    "find_redis_server",
    "missing_packages",
    "start_upstreams",
]

HOST = "127.0.0.1"
DEMO_EXTRA = "pip install 'metaprotocol[demo]'"  # the sample clients' Python packages
READY_TIMEOUT = 5.0  # seconds a redis-server may take to accept connections
STOP_TIMEOUT = 5.0


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server") or shutil.which(
        "redis-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )


def _free_port() -> int:
    # redis-server cannot bind port 0 and report it back, so pick one now; the short race with
    # another process is handled by the readiness check failing with a clear message.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` child process (no persistence, loopback only)."""

    def __init__(self, binary: str, name: str) -> None:
        self.name = name
        self.port = _free_port()
        self.address = (HOST, self.port)
        self._dir = tempfile.TemporaryDirectory(prefix=f"metaprotocol-demo-{name}-")
        options = {
            "port": str(self.port),
            "bind": HOST,
            "save": "",  # no snapshots, no append-only file: a throwaway server
            "appendonly": "no",
            "protected-mode": "no",
            "daemonize": "no",
            "dir": self._dir.name,
            "loglevel": "warning",
            "logfile": os.path.join(self._dir.name, "redis.log"),
        }
        argv = [binary]
        for option, value in options.items():
            argv += [f"--{option}", value]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _log_tail(self) -> str:
        """The end of the server's log (why it exited, say)."""
        try:
            with open(os.path.join(self._dir.name, "redis.log"), "rb") as log:
                return log.read()[-300:].decode(errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the server answers PING; raise RuntimeError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                lines = self._log_tail().strip().splitlines()
                detail = lines[-1] if lines else ""
                raise RuntimeError(
                    f"redis-server ({self.name}) exited with {self._process.returncode}"
                    + (f": {detail}" if detail else "")
                )
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.05, deadline - time.monotonic()))):
                    reader, writer = await asyncio.open_connection(*self.address)
                    try:
                        writer.write(b"PING\r\n")
                        if await reader.readline() == b"+PONG\r\n":
                            return
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server ({self.name}) did not answer PING on port {self.port} "
                    f"within {timeout:g}s"
                )
            await asyncio.sleep(0.02)  # polling a child process that is starting up

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT)
        self._dir.cleanup()


@dataclass
class Upstreams:
    """What ``start_upstreams`` started; ``aclose()`` stops all of it."""

    dubbo: dict[str, asyncio.Server] = field(default_factory=dict)  # "v1"/"v2" -> provider
    thrift: dict[str, ThriftServer] = field(default_factory=dict)  # server name -> server
    http: dict[str, HttpServer] = field(default_factory=dict)  # server name -> server
    redis: dict[str, RedisServer] = field(default_factory=dict)  # "main"/"sessions" -> server
    thrift_skipped: str | None = None  # why there is no Thrift part (thriftpy2 not installed)
    redis_skipped: str | None = None  # why there is no Redis part (not installed)
    redis_failed: str | None = None  # installed, but it would not start: a failure

    def dubbo_address(self, version: str) -> tuple[str, int]:
        host, port = self.dubbo[version].sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def aclose(self) -> None:
        for server in self.dubbo.values():
            server.close()
        for server in self.dubbo.values():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT)
        stops: list[Callable[[], None]] = [s.stop for s in self.thrift.values()]
        stops += [s.stop for s in self.http.values()]
        stops += [s.stop for s in self.redis.values()]
        for stop in stops:
            await asyncio.to_thread(stop)
        self.dubbo.clear()
        self.thrift.clear()
        self.http.clear()
        self.redis.clear()


def missing_packages(*names: str) -> list[str]:
    """Which of the Python packages ``names`` cannot be imported here."""
    return [name for name in names if find_spec(name) is None]


async def start_upstreams(upstreams: Upstreams) -> None:
    """Start every sample server into ``upstreams`` (filled as they start, so a failure
    half-way still leaves ``aclose()`` able to stop what did start)."""
    for version in ("v1", "v2"):
        upstreams.dubbo[version] = await dubbo_provider.serve(HOST, 0)
    if missing_packages("thriftpy2"):
        upstreams.thrift_skipped = f"thriftpy2 not installed: skipping Thrift ({DEMO_EXTRA})"
    else:
        from metaprotocol.samples.thrift_server import ThriftServer

        for name in ("thrift-a", "thrift-b"):
            thrift_server = ThriftServer(HOST, 0, transport="framed", name=name)
            upstreams.thrift[name] = thrift_server.start()
    for name in ("web", "web-canary"):
        upstreams.http[name] = HttpServer(HOST, 0, name=name).start()
    binary = find_redis_server()
    if missing_packages("redis"):
        upstreams.redis_skipped = f"redis-py not installed: skipping Redis ({DEMO_EXTRA})"
        return
    if binary is None:
        upstreams.redis_skipped = (
            "redis-server not installed: skipping Redis (install Redis, e.g. "
            "apt-get install redis-server, and put redis-server on the PATH)"
        )
        return
    try:
        for name in ("main", "sessions"):
            upstreams.redis[name] = RedisServer(binary, name)
        for server in upstreams.redis.values():
            await server.wait_ready()
    except (OSError, RuntimeError) as exc:
        # The other codecs can still run; the Redis part is reported as failed.
        for server in upstreams.redis.values():
            await asyncio.to_thread(server.stop)
        upstreams.redis.clear()
        upstreams.redis_failed = f"could not start redis-server: {exc}"

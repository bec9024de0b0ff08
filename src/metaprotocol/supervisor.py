"""``metaprotocol run --workers N``: N worker processes behind each port, one admin endpoint.

The supervisor (the parent process) binds the configured admin address, then forks N
workers. Each worker binds the listeners with SO_REUSEPORT (the kernel spreads the
connections) and serves an internal admin endpoint of its own on an ephemeral loopback
port, which it reports to the supervisor through a pipe. The supervisor's admin endpoint
answers for the whole proxy:

- ``/stats/prometheus`` and ``/stats/json``: the sum over the workers (counters, gauges and
  histogram buckets add up), plus the gauges ``workers`` (how many answered) and
  ``workers_unreachable``;
- ``/ready``: 200 only while every worker is ready (503 while any drains or is missing);
- ``/config_dump``: worker 0's running config.

SIGHUP, SIGTERM and SIGINT are forwarded to the workers; the supervisor exits when they all
have, with 1 if any failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metaprotocol.admin import AdminApp
from metaprotocol.core.config import Config
from metaprotocol.core.stats import StatsSnapshot
from metaprotocol.snapshots import merge_snapshots, snapshot_from_json

__all__ = ["WORKER_ADMIN_TIMEOUT", "WorkerLink", "Workers", "run_workers"]

log = logging.getLogger("metaprotocol")

WORKER_ADMIN_TIMEOUT = 2.0  # seconds the supervisor waits for one worker's admin answer


class WorkerLink:
    """A worker's end of the port pipe: it reports its internal admin port once."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd: int | None = fd

    def report(self, admin_port: int | None) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if admin_port is not None:
                os.write(fd, f"{self.index} {admin_port}\n".encode("ascii"))
        finally:
            os.close(fd)


class Workers:
    """What the supervisor knows of its workers' internal admin endpoints."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._ports: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, index: int, port: int) -> None:
        with self._lock:
            self._ports[index] = port

    def ports(self) -> dict[int, int]:
        with self._lock:
            return dict(self._ports)

    def read_reports(self, fd: int) -> None:
        """Read ``index port`` lines until every worker has closed its end of the pipe."""
        with os.fdopen(fd, "r", encoding="ascii") as pipe:
            for line in pipe:
                index, _, port = line.strip().partition(" ")
                with contextlib.suppress(ValueError):
                    self.add(int(index), int(port))

    def _get(self, port: int, path: str) -> bytes:
        url = f"http://127.0.0.1:{port}{path}"
        with urllib.request.urlopen(url, timeout=WORKER_ADMIN_TIMEOUT) as answer:
            body: bytes = answer.read()
            return body

    def ready(self) -> bool:
        ports = self.ports()
        if len(ports) < self.count:
            return False
        for port in ports.values():
            try:
                self._get(port, "/ready")
            except (OSError, urllib.error.URLError):  # 503 (draining) is an HTTPError
                return False
        return True

    def snapshot(self) -> StatsSnapshot:
        snapshots: list[StatsSnapshot] = []
        for port in self.ports().values():
            try:
                snapshots.append(snapshot_from_json(json.loads(self._get(port, "/stats/json"))))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("stats of the worker on admin port %d: %s", port, exc)
        merged = merge_snapshots(snapshots)
        merged.gauges[("workers", ())] = len(snapshots)
        merged.gauges[("workers_unreachable", ())] = self.count - len(snapshots)
        return merged

    def config_raw(self) -> Mapping[str, Any]:
        port = self.ports().get(0)
        if port is None:
            return {}
        try:
            data = json.loads(self._get(port, "/config_dump"))
        except (OSError, urllib.error.URLError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class _AdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: AdminApp) -> None:
        super().__init__(address, _AdminHandler)
        self.app = app


class _AdminHandler(BaseHTTPRequestHandler):
    server: _AdminServer

    def _respond(self) -> None:
        try:
            status, content_type, body = self.server.app.respond(self.command, self.path)
        except Exception as exc:  # a worker's answer did not parse, say: say so, stay up
            log.exception("admin %s %s failed", self.command, self.path)
            status, content_type = 500, "text/plain; charset=utf-8"
            body = f"internal error: {exc}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _respond

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin: " + format, *args)


Serve = Callable[[int, "WorkerLink"], int]


def run_workers(config: Config, workers: int, serve: Serve) -> int:
    """Fork ``workers`` processes running ``serve(index, link)``; supervise them; the exit
    code. ``serve`` must bind the listeners with SO_REUSEPORT and, when the config has an
    admin address, serve the internal admin on 127.0.0.1:0 and ``link.report`` its port."""
    zero = [lst.name for lst in config.listeners if lst.port == 0]
    if zero:
        log.error("--workers needs fixed ports; listeners on port 0: %s", ", ".join(zero))
        return 1
    state = Workers(workers)
    server: _AdminServer | None = None
    if config.admin is not None:
        app = AdminApp(ready=state.ready, snapshot=state.snapshot, config_raw=state.config_raw)
        try:
            server = _AdminServer((config.admin.host, config.admin.port), app)
        except OSError as exc:
            log.error("admin address %s:%d: %s", config.admin.host, config.admin.port, exc)
            return 1
    read_fd, write_fd = os.pipe()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its handlers are in place
                os.close(read_fd)
                if server is not None:
                    server.socket.close()
                code = serve(index, WorkerLink(index, write_fd))
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    os.close(write_fd)  # the pipe ends once every worker has reported (or exited)

    def forward(signum: int, frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    log.info("started %d workers: %s", workers, " ".join(map(str, children)))
    threading.Thread(target=state.read_reports, args=(read_fd,), daemon=True).start()
    if server is not None:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        log.info("admin on %s:%d", *server.server_address[:2])
    status = 0
    remaining = set(children)
    try:
        while remaining:
            pid, code = os.wait()
            if pid in remaining:
                remaining.discard(pid)
                exit_code = os.waitstatus_to_exitcode(code)
                if exit_code != 0:
                    log.error("worker %d exited with %d", pid, exit_code)
                    status = 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return status

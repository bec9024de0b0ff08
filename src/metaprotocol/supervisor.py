"""``metaprotocol run --workers N``: N supervised worker processes behind each port, one admin.

The supervisor (the parent process) binds the configured admin address, then forks N
workers. Each worker binds the listeners with SO_REUSEPORT (the kernel spreads the
connections) and serves an internal admin endpoint of its own on an ephemeral loopback
port, which it reports to the supervisor through a pipe. The supervisor's admin endpoint
answers for the whole proxy:

- ``/stats/prometheus`` and ``/stats/json``: the sum over the workers (counters, gauges and
  histogram buckets add up), plus the gauges ``workers`` (how many answered) and
  ``workers_unreachable`` and the counter ``workers_restarted``; the process metrics add up
  the supervisor's and the workers' CPU and memory;
- ``/clusters``: the workers' endpoint views summed (see metaprotocol.endpoints);
- ``/ready``: 200 only while every worker is up and ready (503 while any drains or is missing);
- ``/config_dump``: worker 0's running config.

A worker that dies (killed, crashed) is started again after a delay that doubles on each
quick death in a row (``RESPAWN_DELAY`` up to ``RESPAWN_DELAY_MAX``; a worker that lived
``STABLE_AFTER`` seconds resets it). Its counters and histograms stay in the sums: the
supervisor keeps the last stats it fetched from each worker and, when one dies, adds them to a
retired total, so a sum never goes backwards. A worker of the first start that exits before
it reported (a listener it cannot bind, say) stops the supervisor with exit code 1 instead.

SIGHUP, SIGUSR1, SIGTERM and SIGINT are forwarded to the workers; after SIGTERM or SIGINT
nothing is restarted and the supervisor exits when every worker has, with 1 if any failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metaprotocol.admin import AdminApp
from metaprotocol.core.config import Config
from metaprotocol.core.stats import EndpointStatus, StatsSnapshot
from metaprotocol.endpoints import merge_statuses, statuses_from_json
from metaprotocol.logs import problem
from metaprotocol.snapshots import merge_snapshots, snapshot_from_json
from metaprotocol.startup import describe, reason

__all__ = [
    "RESPAWN_DELAY",
    "RESPAWN_DELAY_MAX",
    "STABLE_AFTER",
    "WORKER_ADMIN_TIMEOUT",
    "WorkerLink",
    "Workers",
    "respawn_delay",
    "run_workers",
]

log = logging.getLogger("metaprotocol")

WORKER_ADMIN_TIMEOUT = 2.0  # seconds the supervisor waits for one worker's admin answer
RESPAWN_DELAY = 0.5  # seconds before a dead worker is started again, doubled per quick death
RESPAWN_DELAY_MAX = 30.0
STABLE_AFTER = 10.0  # seconds a worker must live for its next death to count as the first
_POLL = 0.05  # seconds between checks for dead workers and due restarts


def respawn_delay(quick_deaths: int) -> float:
    """The delay before restarting a worker that died after ``quick_deaths`` quick deaths
    in a row before this one (0: the first)."""
    return min(RESPAWN_DELAY_MAX, RESPAWN_DELAY * float(2 ** min(quick_deaths, 16)))


class WorkerLink:
    """A worker's end of the report pipe: it reports its internal admin port once."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd: int | None = fd

    def report(self, admin_port: int | None) -> None:
        """Tell the supervisor this worker is serving (its admin port, 0 for none)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, f"{self.index} {os.getpid()} {admin_port or 0}\n".encode("ascii"))
        finally:
            os.close(fd)


def _counters_only(snapshot: StatsSnapshot) -> StatsSnapshot:
    """What of a dead worker's stats still counts: counters and histograms, not gauges."""
    return StatsSnapshot(counters=snapshot.counters, gauges={}, histograms=snapshot.histograms)


class Workers:
    """What the supervisor knows of its workers: pids, internal admin ports, last stats."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.restarted = 0
        self._pids: dict[int, int] = {}  # index -> pid of the live worker
        self._ports: dict[int, int] = {}  # index -> admin port, once it reported
        self._reported: set[int] = set()  # indexes whose live worker reported
        self._last: dict[int, tuple[int, StatsSnapshot]] = {}  # index -> (pid, last stats)
        self._retired = StatsSnapshot(counters={}, gauges={}, histograms={})
        self._lock = threading.Lock()

    def started(self, index: int, pid: int) -> None:
        with self._lock:
            self._pids[index] = pid

    def add(self, index: int, port: int, pid: int | None = None) -> None:
        """A worker reported (``pid`` None: trust the index)."""
        with self._lock:
            if pid is not None and self._pids.get(index) != pid:
                return  # a report from a worker that has died since
            self._reported.add(index)
            if port:
                self._ports[index] = port

    def reported(self, index: int) -> bool:
        with self._lock:
            return index in self._reported

    def died(self, index: int) -> None:
        """The worker at ``index`` is gone: keep its last counters in the sums."""
        with self._lock:
            self._pids.pop(index, None)
            self._ports.pop(index, None)
            self._reported.discard(index)
            last = self._last.pop(index, None)
            if last is not None:
                self._retired = merge_snapshots([self._retired, _counters_only(last[1])])

    def ports(self) -> dict[int, int]:
        with self._lock:
            return dict(self._ports)

    def pids(self) -> list[int]:
        with self._lock:
            return [os.getpid(), *self._pids.values()]

    def read_reports(self, fd: int) -> None:
        """Read ``index pid port`` lines for as long as the pipe is open."""
        with os.fdopen(fd, "r", encoding="ascii") as pipe:
            for line in pipe:
                with contextlib.suppress(ValueError):
                    index, pid, port = (int(part) for part in line.split())
                    self.add(index, port, pid)

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
        with self._lock:
            targets = [(index, self._pids.get(index), port) for index, port in self._ports.items()]
        for index, pid, port in targets:
            try:
                snap = snapshot_from_json(json.loads(self._get(port, "/stats/json")))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("stats of the worker on admin port %d: %s", port, exc)
                continue
            snapshots.append(snap)
            with self._lock:
                if pid is not None and self._pids.get(index) == pid:  # still that worker
                    self._last[index] = (pid, snap)
        with self._lock:
            retired, restarted = self._retired, self.restarted
        merged = merge_snapshots([retired, *snapshots])
        merged.gauges[("workers", ())] = len(snapshots)
        merged.gauges[("workers_unreachable", ())] = self.count - len(snapshots)
        merged.counters[("workers_restarted", ())] = restarted
        return merged

    def endpoints(self) -> list[EndpointStatus]:
        views: list[Sequence[EndpointStatus]] = []
        for port in self.ports().values():
            try:
                views.append(
                    statuses_from_json(json.loads(self._get(port, "/clusters?format=json")))
                )
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("clusters of the worker on admin port %d: %s", port, exc)
        return merge_statuses(views)

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
    """Fork ``workers`` processes running ``serve(index, link)``; supervise them (restart the
    ones that die) until SIGTERM/SIGINT; the exit code. ``serve`` must bind the listeners
    with SO_REUSEPORT, serve the internal admin on 127.0.0.1:0 when the config has an admin
    address, and ``link.report`` once it serves."""
    zero = [lst.name for lst in config.listeners if lst.port == 0]
    if zero:
        log.error("--workers needs fixed ports; listeners on port 0: %s", ", ".join(zero))
        return 1
    state = Workers(workers)
    server: _AdminServer | None = None
    if config.admin is not None:
        app = AdminApp(
            ready=state.ready,
            snapshot=state.snapshot,
            config_raw=state.config_raw,
            endpoints=state.endpoints,
            pids=state.pids,
        )
        try:
            server = _AdminServer((config.admin.host, config.admin.port), app)
        except OSError as exc:
            problem(
                f"admin cannot listen on {config.admin.host}:{config.admin.port}: {reason(exc)}"
            )
            return 1
    # The supervisor keeps the write end open: workers started later report through it too.
    read_fd, write_fd = os.pipe()
    children: dict[int, int] = {}  # pid -> index

    def spawn(index: int) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Until its handlers are in place, as in a single process.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(read_fd)
                _die_with_parent()
                if server is not None:
                    server.socket.close()
                code = serve(index, WorkerLink(index, write_fd))
            except BaseException as exc:
                for line in describe(exc):
                    problem(f"worker {index}: {line}")
                log.debug("worker %d failed", index, exc_info=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
        state.started(index, pid)
        return pid

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for index in range(workers):
        spawn(index)
    log.info("started %d workers: %s", workers, " ".join(map(str, children)))
    threading.Thread(target=state.read_reports, args=(read_fd,), daemon=True).start()
    if server is not None:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        log.info("admin on %s:%d", *server.server_address[:2])
    status = 0
    born: dict[int, float] = {index: time.monotonic() for index in range(workers)}
    quick_deaths: dict[int, int] = {}
    restart_at: dict[int, float] = {}  # index -> when to start it again
    first_start = set(range(workers))  # indexes still on their first start
    try:
        while children or (restart_at and not stopping):
            pid, wait_status = _reap()
            now = time.monotonic()
            if pid == 0:
                for index, due in sorted(restart_at.items()):
                    if due <= now and not stopping:
                        del restart_at[index]
                        new_pid = spawn(index)
                        born[index] = now
                        state.restarted += 1
                        log.info("worker %d restarted (pid %d)", index, new_pid)
                time.sleep(_POLL)
                continue
            index_or_none = children.pop(pid, None)
            if index_or_none is None:
                continue
            index = index_or_none
            exit_code = os.waitstatus_to_exitcode(wait_status)
            started = state.reported(index)
            state.died(index)
            if stopping:
                if exit_code != 0:
                    log.error("worker %d exited with %d", pid, exit_code)
                    status = 1
                continue
            if index in first_start and not started:
                log.error("worker %d (pid %d) failed to start; stopping", index, pid)
                status, stopping = 1, True
                forward(signal.SIGTERM, None)
                continue
            first_start.discard(index)
            quick = quick_deaths.get(index, 0) if now - born[index] < STABLE_AFTER else 0
            delay = respawn_delay(quick)
            quick_deaths[index] = quick + 1
            restart_at[index] = now + delay
            log.warning(
                "worker %d (pid %d) %s; restarting it in %.1fs",
                index,
                pid,
                _how_it_ended(exit_code),
                delay,
            )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        os.close(write_fd)
    return status


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM if the supervisor dies (even by
    SIGKILL), so that no orphan keeps serving the ports. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _reap() -> tuple[int, int]:
    """``(pid, wait status)`` of a child that ended, or ``(0, 0)`` when none has."""
    try:
        return os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0, 0


def _how_it_ended(exit_code: int) -> str:
    if exit_code < 0:
        try:
            return f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"was killed by signal {-exit_code}"
    return f"exited with {exit_code}"

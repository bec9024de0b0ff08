"""Process bookkeeping for the end-to-end benchmark: spawn, wait for ports, CPU, RSS, stop.

Every process is started in its own session (so its process group id is its pid), with its
output in a log file of the run's work directory. ``Procs.stop_all`` sends SIGTERM to each
group, then SIGKILL to what is left, and is called from a ``finally`` (and on SIGINT/SIGTERM
via the caller). CPU and RSS are read from ``/proc`` for all members of a process group, so
a master/worker server (nginx) is measured as a whole.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLK_TCK",
    "Proc",
    "Procs",
    "StartError",
    "cpu_seconds",
    "cpu_times",
    "free_port",
    "group_pids",
    "raise_nofile",
    "rss_kib",
    "wait_port",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process exited or never listened; the message carries its log tail."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """The processes of one benchmark run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log = self.workdir / f"{name.replace('/', '-')}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        _signal_group(proc.pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(grace)
        _signal_group(proc.pgid, signal.SIGKILL)  # leftovers of the group (nginx workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(grace)

    def stop_all(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            _signal_group(proc.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(3.0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: Proc | None = None, timeout: float = 15.0) -> None:
    """Return once 127.0.0.1:port accepts connections; StartError if ``proc`` died first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.popen.poll() is not None:
            raise StartError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                tail = proc.tail() if proc is not None else ""
                msg = f"nothing listens on port {port} after {timeout}s\n{tail}"
                raise StartError(msg) from None
            time.sleep(0.05)


def group_pids(pgid: int) -> list[int]:
    """The pids whose process group is ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat_fields(int(entry))
        if stat is not None and int(stat[2]) == pgid:
            pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` field: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pgid: int) -> float:
    """utime + stime of every process of the group (all threads included), in seconds."""
    return sum(cpu_times(pgid))


def cpu_times(pgid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of every process of the group (all threads included)."""
    user = system = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])  # utime (stat field 14)
            system += int(fields[12])  # stime (stat field 15)
    return user / CLK_TCK, system / CLK_TCK


def rss_kib(pgid: int) -> int:
    """Summed VmRSS of the group's processes, in KiB."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def raise_nofile() -> int:
    """Raise this process's (and so its children's) soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard

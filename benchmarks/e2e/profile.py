"""Sampling profile of a running proxy with py-spy, summarised as hot spots.

``record(pid, out, load)`` attaches ``py-spy record --format raw --function --nonblocking``
to ``pid``, runs ``load()`` (a bounded benchmark), stops py-spy with SIGINT and reads the
collapsed stacks. Idle samples (the loop waiting in epoll) are not recorded, so shares are
shares of the proxy's busy Python time. ``hot_spots`` gives self time per function
(``file:function``), ``inclusive`` the time spent in a function and everything it called,
and ``by_file`` self time per source file.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "py_spy", "record"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/", "/benchmarks/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path


@dataclass
class Profile:
    samples: int
    stacks: Counter[tuple[str, ...]]

    @classmethod
    def parse(cls, text: str) -> Profile:
        stacks: Counter[tuple[str, ...]] = Counter()
        for line in text.splitlines():
            body, _, count = line.rpartition(" ")
            if not body or not count.isdigit():
                continue
            frames = []
            for raw in body.split(";"):
                m = _FRAME.match(raw)
                frames.append(f"{_short(m['file'])}:{m['func']}" if m else raw)
            stacks[tuple(frames)] += int(count)
        return cls(sum(stacks.values()), stacks)

    def hot_spots(self, top: int = 15) -> list[tuple[str, float]]:
        """Self time per function (the innermost frame), as shares of all samples."""
        leaf: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if stack:
                leaf[stack[-1]] += n
        return [(f, n / self.samples) for f, n in leaf.most_common(top)]

    def inclusive(self, top: int = 15, contains: str = "metaprotocol/") -> list[tuple[str, float]]:
        """Time in a function and its callees (each stack counted once per function);
        the entry frames every sample passes through (main, runner) are left out."""
        total: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            for frame in set(stack):
                if contains in frame:
                    total[frame] += n
        shares = [(f, n / self.samples) for f, n in total.most_common()]
        return [(f, s) for f, s in shares if s < 0.9][:top]

    def by_file(self, top: int = 12) -> list[tuple[str, float]]:
        files: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if stack:
                files[stack[-1].rsplit(":", 1)[0]] += n
        return [(f, n / self.samples) for f, n in files.most_common(top)]


def record(pid: int, out: Path, load: Callable[[], object], rate: int = 250) -> Profile | None:
    """Profile ``pid`` while ``load()`` runs; the raw collapsed stacks are kept in ``out``."""
    binary = py_spy()
    if binary is None:
        return None
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    argv += ["--function", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        time.sleep(0.5)  # attach before the load starts
        load()
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.communicate()
            return None
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}")
    return Profile.parse(out.read_text())

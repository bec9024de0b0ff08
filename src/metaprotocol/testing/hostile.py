"""Hostile clients for isolation tests and benchmarks: one that never reads its replies, and
a look at a process's resident memory (Linux ``/proc``).

    with NonReader(("127.0.0.1", port), b"GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n") as hog:
        ...                      # the proxy gets pipelined requests it cannot answer
    print(hog.closed)            # connections the proxy closed on it
    print(peak_rss(pid) - base)  # what it cost the proxy
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from types import TracebackType

__all__ = ["NonReader", "peak_rss", "rss"]


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` now, in bytes."""
    return _status_field(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    """The most resident memory process ``pid`` has had so far, in bytes (the kernel's
    high-water mark: no sampling gap can miss a peak)."""
    return _status_field(pid, "VmHWM")


class NonReader:
    """A client that pipelines ``request`` over and over and never reads a reply.

    It runs in a thread from ``start()`` (or entering the ``with`` block) to ``stop()``.
    Its receive buffer is kept small, so unread replies pile up on the server's side. When
    the server closes the connection it counts it in ``closed`` and connects again, so the
    pressure lasts as long as the thread runs. ``sent`` counts complete requests sent.
    """

    def __init__(
        self, address: tuple[str, int], request: bytes, *, receive_buffer: int = 4096
    ) -> None:
        self.address = address
        self.request = request
        self.receive_buffer = receive_buffer
        self.closed = 0
        self.connections = 0
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="non-reader", daemon=True)

    def start(self) -> NonReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> NonReader:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._one_connection():
                    self.closed += 1
        except BaseException as exc:  # handed to the caller by stop()
            self.error = exc

    def _one_connection(self) -> bool:
        """Pipeline requests until the server closes (True) or ``stop()`` (False)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        try:
            sock.settimeout(10.0)
            sock.connect(self.address)
            self.connections += 1
            sock.setblocking(False)
            burst = self.request * max(1, 65536 // len(self.request))
            per_burst = len(burst) // len(self.request)
            view = memoryview(burst)
            while not self._stop.is_set():
                try:
                    view = view[sock.send(view) :]
                except (BlockingIOError, InterruptedError):
                    select.select([], [sock], [], 0.05)
                    continue
                except OSError:  # reset or broken pipe: the server closed it
                    return True
                if not view:
                    self.sent += per_burst
                    view = memoryview(burst)
                    time.sleep(0)  # let other threads of the test run
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.close()

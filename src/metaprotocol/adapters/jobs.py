"""Blocking work off the event loop (docs/architecture.md, "Adapters"): a function runs on
a worker thread and its outcome is posted back to the loop's thread (``post``: the
adapter's thread-safe "call this soon"), where it may be fed to the core as an event.

``WorkerThread`` runs submitted functions one at a time, in order (the blocking adapter's
global rate-limit calls: one Redis connection). ``Periodic`` runs one function every
``interval`` seconds on a thread of its own: the place for discovery jobs (re-resolving
DNS names, refreshing a Redis Cluster slot map) whose result the core takes as an event.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

__all__ = ["Done", "Periodic", "Post", "WorkerThread", "running_loop_post"]

T = TypeVar("T")
Post = Callable[[Callable[[], None]], object]
"""The loop's thread-safe "run this on the loop's thread soon"."""
Done = Callable[[T | None, str], None]
"""Called on the loop's thread with ``(result, "")`` or ``(None, error)``."""


def running_loop_post() -> Post:
    """The running event loop's ``Post``, for code under anyio: trio's token, else asyncio's
    loop, the function run in a task of its own there (anyio needs one to find its
    backend). Call it on the loop's thread."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            post: Post = trio.lowlevel.current_trio_token().run_sync_soon
            return post
        except RuntimeError:  # trio is imported, but this is not a trio run
            pass
    import asyncio

    loop = asyncio.get_running_loop()

    async def run(fn: Callable[[], None]) -> None:
        fn()

    return lambda fn: loop.call_soon_threadsafe(lambda: loop.create_task(run(fn)))


def _outcome(fn: Callable[[], T]) -> tuple[T | None, str]:
    try:
        return fn(), ""
    except Exception as exc:
        return None, str(exc) or type(exc).__name__


class WorkerThread:
    """One worker thread: submitted functions run one at a time, in order."""

    def __init__(self, post: Post, name: str) -> None:
        self._post = post
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[[], T], done: Done[T]) -> None:
        """Run ``fn`` on the worker; ``done`` gets its outcome on the loop's thread."""

        def work() -> None:
            result, error = _outcome(fn)
            self._post(lambda: done(result, error))

        self._pool.submit(work)

    def close(self) -> None:
        """Drop what has not started; wait for the function running now (an outcome it
        posts after this is the loop's to ignore)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class Periodic(Generic[T]):
    """``fn`` every ``interval`` seconds (the first run at once) on a thread of its own,
    each outcome posted to the loop as ``done(result, error)``, until ``close()``."""

    def __init__(
        self, interval: float, fn: Callable[[], T], done: Done[T], post: Post, name: str
    ) -> None:
        self.interval = interval
        self._fn, self._done, self._post = fn, done, post
        self.min_gap = 0.1  # between a run and one asked for with ``wake``
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Periodic[T]:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            result, error = _outcome(self._fn)
            if self._stop.is_set():
                return
            try:
                self._post(partial(self._done, result, error))
            except (RuntimeError, OSError):  # the loop is gone: nobody to tell
                return
            if self._wake.wait(self.interval) and not self._stop.is_set():
                self._wake.clear()  # asks that came during the run fold into this one
                self._stop.wait(self.min_gap)

    def wake(self) -> None:
        """Run now rather than at the end of the interval (thread-safe; while a run is in
        progress, one more run follows it, at least ``min_gap`` seconds after it)."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop: no outcome is posted after this returns (a run in progress is waited for
        up to ``timeout``; its outcome is dropped)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

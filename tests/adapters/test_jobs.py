"""Blocking work off the loop on its own: outcomes are posted back, never run on the worker."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import anyio
import pytest

from metaprotocol.adapters.jobs import Periodic, WorkerThread, running_loop_post

TIMEOUT = 10.0


class _Loop:
    """Stands in for an event loop: ``post`` queues, ``run_one`` runs on this thread."""

    def __init__(self) -> None:
        self.posted: queue.Queue[Callable[[], None]] = queue.Queue()

    def post(self, fn: Callable[[], None]) -> None:
        self.posted.put(fn)

    def run_one(self) -> None:
        self.posted.get(timeout=TIMEOUT)()


def test_submitted_work_runs_in_order_on_the_worker_and_its_outcome_on_the_loop() -> None:
    loop = _Loop()
    worker = WorkerThread(loop.post, "test-worker")
    done: list[tuple[object, str, str]] = []
    here = threading.current_thread().name

    def record(result: object, error: str) -> None:
        done.append((result, error, threading.current_thread().name))

    def fail() -> int:
        raise ValueError("no")

    try:
        worker.submit(lambda: threading.current_thread().name, record)
        worker.submit(fail, record)
        worker.submit(lambda: 3, record)
        for _ in range(3):
            loop.run_one()
    finally:
        worker.close()
    (name, error, thread), failed, third = done
    assert str(name).startswith("test-worker") and error == "" and thread == here
    assert failed == (None, "no", here) and third == (3, "", here)


def test_a_periodic_job_repeats_until_closed() -> None:
    loop = _Loop()
    runs: list[int] = []
    outcomes: list[tuple[int | None, str]] = []

    def job() -> int:
        runs.append(len(runs))
        if len(runs) == 2:
            raise OSError("resolver down")
        return len(runs)

    periodic = Periodic(0.0, job, lambda r, e: outcomes.append((r, e)), loop.post, "discover")
    periodic.start()
    try:
        for _ in range(3):
            loop.run_one()
    finally:
        periodic.close(TIMEOUT)
    assert outcomes[:3] == [(1, ""), (None, "resolver down"), (3, "")]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_running_loops_post_runs_a_function_on_the_loops_thread(backend: str) -> None:
    ran: list[str] = []

    async def main() -> None:
        post = running_loop_post()
        done = anyio.Event()

        def on_loop() -> None:
            ran.append(threading.current_thread().name)
            done.set()

        thread = threading.Thread(target=post, args=(on_loop,), name="poster")
        thread.start()
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        thread.join()

    anyio.run(main, backend=backend)
    assert ran == [threading.current_thread().name]


def test_wake_brings_the_next_run_forward() -> None:
    loop = _Loop()
    runs: list[int] = []

    def job() -> int:
        runs.append(len(runs))
        return len(runs)

    outcomes: list[int | None] = []
    periodic = Periodic(3600.0, job, lambda r, e: outcomes.append(r), loop.post, "slots")
    periodic.min_gap = 0.0
    periodic.start()
    try:
        loop.run_one()  # the first run, at once
        periodic.wake()  # without it the next would come in an hour
        loop.run_one()
    finally:
        periodic.close(TIMEOUT)
    assert outcomes == [1, 2]

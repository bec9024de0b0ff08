"""Timers: the heap with lazy cancellation and the per-duration deadline queues."""

from __future__ import annotations

from typing import Any

from metaprotocol.core.timers import DeadlineQueue, Timers


def test_heap_timers_fire_in_order_and_cancelled_ones_never() -> None:
    timers = Timers()
    fired: list[str] = []
    timers.schedule(2.0, lambda arg, now: fired.append(arg), "b")
    cancelled = timers.schedule(1.0, lambda arg, now: fired.append(arg), "x")
    timers.schedule(1.5, lambda arg, now: fired.append(arg), "a")
    cancelled.cancel()
    assert len(timers) == 2 and timers.next_deadline() == 1.5
    timers.fire_due(3.0)
    assert fired == ["a", "b"] and len(timers) == 0 and timers.next_deadline() is None


def test_cancelled_timers_are_compacted_away() -> None:
    timers = Timers()
    for i in range(5000):
        timers.schedule(float(i), lambda arg, now: None).cancel()
    assert len(timers.heap) < 3000  # not one entry per cancelled timer


def test_deadline_queue_expires_in_order_with_one_heap_timer() -> None:
    timers = Timers()
    expired: list[tuple[Any, float]] = []
    queue = DeadlineQueue(timers, 10.0, lambda key, now: expired.append((key, now)))
    queue.add("a", 0.0)
    queue.add("b", 1.0)
    queue.add("c", 2.0)
    assert len(timers) == 1 and timers.next_deadline() == 10.0
    queue.discard("a")  # answered: its deadline no longer matters
    timers.fire_due(10.0)  # the watcher fires for "a"'s deadline, finds "b" not yet due
    assert expired == [] and timers.next_deadline() == 11.0
    timers.fire_due(12.5)
    assert expired == [("b", 12.5), ("c", 12.5)]
    assert not queue.entries


def test_deadline_queue_entry_added_while_expiring_is_watched() -> None:
    timers = Timers()
    expired: list[Any] = []
    queue: DeadlineQueue

    def on_expire(key: Any, now: float) -> None:
        expired.append(key)
        if key == "first":
            queue.add("retry", now)  # a retried request gets a new deadline

    queue = DeadlineQueue(timers, 5.0, on_expire)
    queue.add("first", 0.0)
    timers.fire_due(5.0)
    assert expired == ["first"] and timers.next_deadline() == 10.0
    timers.fire_due(10.0)
    assert expired == ["first", "retry"]


def test_an_empty_queue_leaves_only_an_idle_watcher() -> None:
    timers = Timers()
    queue = DeadlineQueue(timers, 5.0, lambda key, now: None)
    queue.add("a", 0.0)
    queue.discard("a")
    assert queue.idle_check and len(timers) == 1
    timers.fire_due(5.0)
    assert not queue.idle_check and len(timers) == 0

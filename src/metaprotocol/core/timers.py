"""A min-heap of deadlines with lazy cancellation; the core's only notion of time.

Cancelling is O(1): the entry stays in the heap but drops its callback (so nothing it
referenced stays alive), and the heap is compacted once cancelled entries outnumber
live ones. Most request timers are cancelled long before they fire, so without the
compaction the heap would hold every request of the last ``timeout`` seconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["DeadlineQueue", "Timer", "Timers"]

Callback = Callable[[Any, float], None]


class Timer:
    """A scheduled ``callback(arg, now)``; ``cancel()`` makes it a no-op."""

    __slots__ = ("arg", "callback", "deadline", "owner", "seq")

    def __init__(self, owner: Timers, deadline: float, seq: int, callback: Callback, arg: Any):
        self.owner = owner
        self.deadline = deadline
        self.seq = seq
        self.callback: Callback | None = callback
        self.arg = arg

    @property
    def cancelled(self) -> bool:
        return self.callback is None

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.arg = None
            self.owner.live -= 1

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Timers:
    __slots__ = ("_seq", "heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self.live = 0

    def schedule(self, deadline: float, callback: Callback, arg: Any = None) -> Timer:
        self._seq += 1
        timer = Timer(self, deadline, self._seq, callback, arg)
        heap = self.heap
        heapq.heappush(heap, (deadline, self._seq, timer))
        self.live += 1
        if len(heap) > 1024 and len(heap) > 2 * self.live:
            self.heap = [entry for entry in heap if entry[2].callback is not None]
            heapq.heapify(self.heap)
        return timer

    def next_deadline(self) -> float | None:
        heap = self.heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire_due(self, now: float) -> None:
        """Run every live timer whose deadline is <= now, earliest first."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            callback = timer.callback
            if callback is not None:
                arg = timer.arg
                timer.cancel()
                callback(arg, now)
            heap = self.heap  # a callback may have compacted the heap

    def __len__(self) -> int:
        return self.live


class DeadlineQueue:
    """Deadlines that all lie the same ``duration`` after their start: first in, first due.

    Every request of a route shares one timeout, so request deadlines arrive in order and a
    plain insertion-ordered dict is enough: adding and removing are O(1) and allocate
    nothing, where a heap timer per request would cost an object and two heap operations.
    One heap timer per queue watches the oldest entry. ``now`` must never go backwards.
    """

    __slots__ = ("callback", "check", "duration", "entries", "timers")

    def __init__(self, timers: Timers, duration: float, callback: Callback) -> None:
        self.timers = timers
        self.duration = duration
        self.callback = callback
        self.entries: dict[Any, float] = {}
        self.check: Timer | None = None

    def add(self, key: Any, now: float) -> None:
        deadline = now + self.duration
        self.entries[key] = deadline
        if self.check is None:
            self._watch(deadline)

    def _watch(self, deadline: float) -> None:
        # A method of its own: after ``self.check = None`` in ``_expire`` a callback may set
        # it again, which type narrowing inside one function (and mypyc) would not see.
        if self.check is None:
            self.check = self.timers.schedule(deadline, self._expire)

    def discard(self, key: Any) -> None:
        # The watching timer stays armed even when the queue empties: under load the queue
        # refills at once, and re-arming per request would cost what the queue saves.
        self.entries.pop(key, None)

    @property
    def idle_check(self) -> bool:
        """Only the watching timer is left (it fires once, finds nothing, and stops)."""
        return not self.entries and self.check is not None

    def _expire(self, _arg: Any, now: float) -> None:
        self.check = None
        entries = self.entries
        while entries:
            key, deadline = next(iter(entries.items()))
            if deadline > now:
                self._watch(deadline)
                return
            del entries[key]
            self.callback(key, now)

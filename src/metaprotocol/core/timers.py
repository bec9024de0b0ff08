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

__all__ = ["Timer", "Timers"]

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

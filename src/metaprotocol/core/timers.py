"""A min-heap of deadlines with lazy cancellation; the core's only notion of time."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count

__all__ = ["Timer", "Timers"]


class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op without touching the heap."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[float], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = count()

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire_due(self, now: float) -> None:
        """Run every live timer whose deadline is <= now, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback(now)

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)

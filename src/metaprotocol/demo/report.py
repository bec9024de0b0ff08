"""What the demo saw, per codec, and the short report it prints.

Two points of view are combined: the clients' (replies, expected and unexpected errors,
round-trip latency) and the proxy's (routes hit, from the ``RequestCompleted`` events an
embedding program can observe through ``handle.dispatcher.observers``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from metaprotocol.core.outputs import Output, RequestCompleted

__all__ = ["CodecResult", "ProxyTally", "percentile", "render"]


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ``samples`` (which must not be empty)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


@dataclass
class CodecResult:
    """One codec's part of the demo, as its client saw it."""

    codec: str
    ok: int = 0
    expected: Counter[str] = field(default_factory=Counter)  # expected error -> count
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds per round trip
    notes: list[tuple[str, str]] = field(default_factory=list)  # (label, text) report lines
    skipped: str | None = None

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time one round trip into ``latencies``."""
        start = time.perf_counter()
        yield
        self.latencies.append(time.perf_counter() - start)

    def check(self, condition: bool, failure: str) -> bool:
        """Record ``failure`` as unexpected when ``condition`` is false; return ``condition``."""
        if not condition:
            self.unexpected.append(failure)
        return condition

    def expect_error(self, label: str) -> None:
        self.expected[label] += 1

    def note(self, label: str, text: str) -> None:
        self.notes.append((label, text))


class ProxyTally:
    """Collects the proxy's observer events: routes hit and errors per listener."""

    def __init__(self) -> None:
        self.routes: Counter[tuple[str, str, str]] = Counter()  # (listener, route, cluster)
        self.errors: Counter[tuple[str, str]] = Counter()  # (listener, error type)
        self.completed: Counter[str] = Counter()  # listener -> requests completed

    def observe(self, output: Output) -> None:
        if isinstance(output, RequestCompleted):
            self.completed[output.listener] += 1
            if output.route:
                self.routes[(output.listener, output.route, output.cluster)] += 1
            if output.error is not None:
                self.errors[(output.listener, output.error.name.lower())] += 1

    def routes_of(self, listener: str) -> str:
        hits = [
            f"{route} -> {cluster} x{n}"
            for (name, route, cluster), n in self.routes.items()
            if name == listener
        ]
        return ", ".join(hits) or "none"

    def errors_of(self, listener: str) -> str:
        found = [f"{error} x{n}" for (name, error), n in self.errors.items() if name == listener]
        return ", ".join(found)


_LABEL_WIDTH = 16


def _line(label: str, text: str) -> str:
    return f"  {label:<{_LABEL_WIDTH}}{text}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def render(
    results: list[CodecResult], tally: ProxyTally, listeners: dict[str, tuple[str, int]]
) -> list[str]:
    """The report's lines, one block per codec."""
    lines: list[str] = []
    for result in results:
        name = result.codec
        if result.skipped is not None:
            lines += [f"{name}", _line("skipped", result.skipped), ""]
            continue
        address = listeners.get(name)
        if address is None:  # it never got as far as a listener: only the failure matters
            lines += [name, *(_line("UNEXPECTED", f) for f in result.unexpected), ""]
            continue
        lines.append(f"{name} (proxy listener {address[0]}:{address[1]})")
        lines.append(_line("routes hit", tally.routes_of(name)))
        lines.append(_line("replies ok", str(result.ok)))
        if result.expected:
            expected = ", ".join(f"{label} x{n}" for label, n in result.expected.items())
            total = sum(result.expected.values())
            lines.append(_line("errors", f"{total} expected ({expected})"))
        else:
            lines.append(_line("errors", "none"))
        for label, text in result.notes:
            lines.append(_line(label, text))
        proxy_errors = tally.errors_of(name)
        if proxy_errors:
            lines.append(_line("proxy counted", proxy_errors))
        if result.latencies:
            p50, p99 = percentile(result.latencies, 50), percentile(result.latencies, 99)
            lines.append(
                _line(
                    "latency",
                    f"p50 {_ms(p50)}  p99 {_ms(p99)}  "
                    f"({len(result.latencies)} round trips through the proxy)",
                )
            )
        for failure in result.unexpected:
            lines.append(_line("UNEXPECTED", failure))
        lines.append("")
    return lines

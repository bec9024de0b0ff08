"""The ``isolation`` group: ``benchmarks/isolation.py``'s bounds, per adapter and build.

For each adapter of each build, HTTP/1.1 (nginx) and Redis (redis-server), and both setups
(``default`` limits; ``shared``: one upstream connection per endpoint), a non-reading client
pipelines GETs of a 1 MiB answer while an innocent client sends small GETs one at a time
(``benchmarks/isolation.py`` has the measurement and its description). Reported: the
proxy's peak RSS above its warm level, how often the non-reader was closed, and the innocent
client's p50 / p99 alone and beside the non-reader. Bounded: ``seconds`` of non-reader per
measurement, so about ``2 * seconds + 3`` s each.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.isolation import HEADER, Outcome, peers, run_one

__all__ = ["Build", "markdown", "measure"]

Build = tuple[str, str, tuple[str, ...]]  # (target prefix, python, adapters)
# The CLI's adapters: rloop exists only in the benchmark's own launcher (mprun.py), which has
# no admin listener to count the non-reader's closes.
ADAPTERS = ("asyncio", "uvloop", "trio", "blocking")


def measure(
    builds: Sequence[Build],
    seconds: float,
    log: Callable[[str], None],
    notes: list[str],
) -> list[Outcome]:
    """Every (build, adapter, protocol, setup) once; a measurement that fails is a note."""
    outcomes: list[Outcome] = []
    skipped = sorted({a for _, _, adapters in builds for a in adapters} - set(ADAPTERS))
    if skipped:
        notes.append(f"isolation: not measured on {', '.join(skipped)} (no `metaprotocol run`)")
    with peers() as (nginx_port, redis_port), tempfile.TemporaryDirectory() as tmp:
        for prefix, python, adapters in builds:
            for adapter in (a for a in adapters if a in ADAPTERS):
                name = f"{prefix}/{adapter}"
                for codec, upstream in (("http1", nginx_port), ("redis", redis_port)):
                    for shared in (False, True):
                        try:
                            outcome = run_one(
                                adapter,
                                codec,
                                upstream,
                                shared,
                                seconds,
                                Path(tmp),
                                python=python,
                                label=name,
                            )
                        except Exception as exc:  # one measurement: report it and go on
                            why = str(exc).strip().splitlines()
                            notes.append(
                                f"isolation {name} {codec} {'shared' if shared else 'default'}: "
                                f"{type(exc).__name__}: {why[-1][:200] if why else ''}"
                            )
                            continue
                        outcomes.append(outcome)
                        log(f"  isolation {outcome.row()}")
    return outcomes


def markdown(outcomes: Sequence[Outcome], seconds: float) -> list[str]:
    if not outcomes:
        return []
    return [
        "## Isolation: one client that never reads its replies",
        "",
        f"`benchmarks/isolation.py`'s measurement, {seconds:g} s of non-reader each: the proxy "
        "as its own process, a client pipelining GETs of a 1 MiB answer (nginx, redis-server) "
        "and never reading, beside an innocent client sending small GETs one at a time; "
        "default limits (`output_buffer_limit` 32 MiB). *default*: the non-reader's upstream "
        "connection is its own (read-disabled when it is full); *shared*: one upstream "
        "connection per endpoint, so the non-reader's answers fill its own output buffer "
        "until the proxy closes it (it reconnects at once). Peak RSS is the kernel's "
        "high-water mark (VmHWM) above its level after warm-up.",
        "",
        HEADER,
        *(o.row() for o in outcomes),
        "",
    ]


if __name__ == "__main__":  # pragma: no cover - a manual check of the group alone
    notes: list[str] = []
    found = measure([("metaprotocol", sys.executable, ("uvloop",))], 1.0, lambda t: print(t), notes)
    print("\n".join(markdown(found, 1.0)), notes)

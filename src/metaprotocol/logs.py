"""Process logging for ``metaprotocol run``: text or JSON lines, startup problems, and the
rate-limited operator log of what the core reports (upstream connect failures, ejections).

The core never logs: it emits ``EndpointConnectFailed`` and ``EndpointEjected`` as observer
events, and ``OperationsLog.observe`` (installed by every adapter's dispatcher) turns them
into warnings, at most one line per endpoint and kind every ``RATE_LIMIT_INTERVAL``
seconds, the next line saying how many were left out.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from metaprotocol.core.outputs import (
    EndpointConnectFailed,
    EndpointEjected,
    EndpointHealthChanged,
    Output,
)

__all__ = [
    "LOG_FORMATS",
    "RATE_LIMIT_INTERVAL",
    "JsonFormatter",
    "OperationsLog",
    "RateLimitedLog",
    "configure",
    "problem",
]

log = logging.getLogger("metaprotocol")

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RATE_LIMIT_INTERVAL = 10.0  # seconds between two lines about the same endpoint and kind

LogFormat = Literal["text", "json"]
_format: list[str] = ["text"]  # what configure() chose, for problem()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``pid``, and ``exception`` when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        data: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), replacing any earlier
    setup of the root logger."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _format[0] = fmt


def problem(message: str) -> None:
    """Report one reason the process cannot run: ``error: message`` on stderr in text mode,
    an error record in JSON mode (so a log pipeline still reads one object per line)."""
    if _format[0] == "json":
        log.error(message)
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


class RateLimitedLog:
    """Logs at most one line per key every ``interval`` seconds; the next line that gets
    through says how many were suppressed meanwhile."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = RATE_LIMIT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}

    def log(self, level: int, key: tuple[str, ...], message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago;
        whether it was."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d more like it suppressed in the last %.0fs)"
            args = (*args, suppressed, now - (last or now))
        self._logger.log(level, message, *args)
        return True


class OperationsLog:
    """Turns the core's operator events into rate-limited warnings."""

    def __init__(self, limiter: RateLimitedLog | None = None) -> None:
        self._limiter = limiter if limiter is not None else RateLimitedLog(log)

    def observe(self, output: Output) -> None:
        if isinstance(output, EndpointConnectFailed):
            self._limiter.log(
                logging.WARNING,
                ("connect", output.cluster, output.endpoint),
                "upstream %s of cluster %s: connect failure: %s",
                output.endpoint,
                output.cluster,
                output.error,
            )
        elif isinstance(output, EndpointEjected):
            self._limiter.log(
                logging.WARNING,
                ("eject", output.cluster, output.endpoint),
                "endpoint %s of cluster %s ejected for %gs (ejection %d)",
                output.endpoint,
                output.cluster,
                output.duration,
                output.ejections,
            )
        elif isinstance(output, EndpointHealthChanged):
            self._limiter.log(
                logging.WARNING if output.health == "unhealthy" else logging.INFO,
                ("health", output.cluster, output.endpoint, output.health),
                "endpoint %s of cluster %s %s after %d %s probe(s) in a row",
                output.endpoint,
                output.cluster,
                output.health,
                output.probes,
                "failed" if output.health == "unhealthy" else "good",
            )

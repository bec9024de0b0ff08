"""Where the core's observer events go (docs/architecture.md, "Adapters"): the access log,
the trace exporter, the rate-limited operations log, the error log of a filter that raised,
and any watcher an embedding program adds. They only inform: nothing here feeds the core."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from metaprotocol.accesslog import AccessLog
from metaprotocol.core.config import TracingConfig
from metaprotocol.core.outputs import FilterFailed, Output, RequestCompleted
from metaprotocol.logs import OperationsLog
from metaprotocol.tracing import SpanExporter

__all__ = ["Observers", "log_event"]

log = logging.getLogger("metaprotocol")


def log_event(event: Output) -> None:
    """Log what the core reports for the log (the adapters' job: the core does no IO): a
    filter that raised. Requests are never logged. (Upstream connect failures and ejections
    go to the rate-limited ``OperationsLog``, one of the watchers.)"""
    if isinstance(event, FilterFailed):
        log.error(
            "filter %s raised on listener %s (route %s); the request got an internal error",
            event.filter,
            event.listener,
            event.route or "-",
            exc_info=event.exception,
        )


class Observers:
    """Routes observer events: ``RequestCompleted`` to the access log and, when tracing is
    configured, to the span exporter (``tracer``, made here: the ``tracing`` section is read
    once, at start); every event to each of ``watchers`` (the operations log first)."""

    def __init__(
        self, access_log: AccessLog | None = None, tracing: TracingConfig | None = None
    ) -> None:
        self.access_log = access_log
        self.tracer = None if tracing is None else SpanExporter(tracing)
        self.watchers: list[Callable[[Output], None]] = [OperationsLog().observe]

    def append(self, watcher: Callable[[Output], None]) -> None:
        """Send every observer event to ``watcher`` too."""
        self.watchers.append(watcher)

    def __call__(self, event: Output) -> None:
        if isinstance(event, RequestCompleted):
            wall = time.time()
            if self.access_log is not None:
                self.access_log.log(event, wall)
            if self.tracer is not None and event.span is not None:
                self.tracer.record(event, wall)
        elif isinstance(event, FilterFailed):
            log_event(event)
        for watcher in self.watchers:
            watcher(event)

    def reopen_access_log(self) -> None:
        """Reopen the access log file (after a rotation); a failure is logged and the old
        file kept."""
        if self.access_log is None:
            return
        try:
            self.access_log.reopen()
        except OSError as exc:
            log.error("cannot reopen the access log %s: %s", self.access_log.path, exc)
            return
        log.info("access log %s reopened", self.access_log.path)

    def close(self) -> None:
        """Write out and close the access log; export the spans still queued."""
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()

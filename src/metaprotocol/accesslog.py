"""Access log: one JSON object per line for every ``RequestCompleted`` observer event.

Fields: ``time`` (wall clock, ISO 8601 UTC with milliseconds), ``listener``, ``route``,
``cluster``, ``endpoint``, ``status``, ``error`` (an ``ErrorType`` value or null),
``duration_ms`` (float) and ``metadata``: the routing properties named in the config's
``access_log.metadata`` list (none by default: HTTP headers may carry credentials; ``"*"``
logs every property).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from metaprotocol.core.outputs import RequestCompleted

__all__ = ["AccessLog", "format_line"]


def format_line(
    event: RequestCompleted, wall_time: float, metadata: tuple[str, ...] = ("*",)
) -> str:
    """The access-log line (without the newline) for ``event`` completed at ``wall_time``,
    with the properties named in ``metadata`` (``"*"``: all of them)."""
    props = event.properties
    if "*" in metadata:
        chosen = dict(props)
    else:
        chosen = {key: props[key] for key in metadata if key in props}
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(wall_time, UTC).isoformat(timespec="milliseconds"),
        "listener": event.listener,
        "route": event.route,
        "cluster": event.cluster,
        "endpoint": event.endpoint,
        "status": event.status,
        "error": None if event.error is None else event.error.value,
        "duration_ms": round(event.duration * 1000.0, 3),
        "metadata": chosen,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class AccessLog:
    """Appends lines to a file path, or to stdout for ``"-"``.

    Lines are buffered and written out by ``flush()``, which the adapters call once per batch
    of core outputs, so a burst of completions costs one write.
    """

    def __init__(self, target: str | IO[str], metadata: tuple[str, ...] = ()) -> None:
        self.metadata = metadata  # which routing properties each line carries
        self._owned = False
        if isinstance(target, str):
            if target == "-":
                self._stream: IO[str] = sys.stdout
            else:
                self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115
                self._owned = True
        else:
            self._stream = target
        self._pending: list[str] = []

    def log(self, event: RequestCompleted, wall_time: float | None = None) -> None:
        when = time.time() if wall_time is None else wall_time
        self._pending.append(format_line(event, when, self.metadata))

    def flush(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed stdout or a full disk must not stop the proxy
            pass

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._stream.close()

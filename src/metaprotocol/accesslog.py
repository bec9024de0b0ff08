"""Access log: one JSON object per line for every ``RequestCompleted`` observer event.

Every request the proxy answers gets a line, including those it answers itself (no route,
over a limit, refused by the codec, undecodable). Fields (docs/configuration.md lists
them with examples):

- ``start_time``: when the request arrived (wall clock, ISO 8601 UTC, milliseconds);
  ``duration_ms``: until its answer was handed to the client connection (float);
- ``listener``, ``route``, ``cluster``, ``upstream_host`` (host:port of the last attempt),
  ``downstream_remote_address`` (the client's address), ``codec``; null when there is none;
- ``status``: the status the client got in the codec's words (HTTP code, Dubbo status
  byte, RESP error prefix or OK, Thrift exception type or OK); null when nothing was sent;
- ``response_flags``: Envoy-style short codes saying why the proxy answered (or did not
  answer) itself, comma-separated, ``-`` for none (see ``response_flags``);
- ``bytes_received`` / ``bytes_sent``: the request's and its answer's sizes on the client
  connection; ``attempts``: how many times it was sent upstream (retries included);
- ``outcome``: ok, error (an upstream error response), local_error, oneway, abandoned,
  reset (a stream the client reset);
  ``error``: the ``ErrorType`` value of a local answer, or null;
- ``trace_id``: the request's trace (hex) when tracing sampled it, else null;
- ``metadata``: the routing properties named in the config's ``access_log.metadata`` list
  (none by default: HTTP headers may carry credentials; ``"*"`` logs every property).

SIGUSR1 and SIGHUP make ``metaprotocol run`` reopen the file (``reopen``): rotate it with
``mv`` then signal, as with nginx.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Final

from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import RequestCompleted

__all__ = ["RESPONSE_FLAGS", "AccessLog", "format_line", "response_flags"]

RESPONSE_FLAGS: Final[dict[ErrorType, str]] = {
    ErrorType.ROUTE_NOT_FOUND: "NR",  # no route matched
    ErrorType.CLUSTER_NOT_FOUND: "NC",  # the route's cluster does not exist
    ErrorType.NO_HEALTHY_UPSTREAM: "UH",  # every endpoint ejected
    ErrorType.CONNECT_FAILURE: "UF",  # upstream connect failed or timed out
    ErrorType.TIMEOUT: "UT",  # upstream request timeout
    ErrorType.UPSTREAM_RESET: "UR",  # upstream closed or reset the connection
    ErrorType.BAD_RESPONSE: "UPE",  # upstream protocol error
    ErrorType.BAD_REQUEST: "DPE",  # downstream protocol error, or refused by the codec
    ErrorType.MESSAGE_TOO_LARGE: "DPE",
    ErrorType.OVER_LIMIT: "RL",  # rate limited (UO instead once a cluster was chosen)
    ErrorType.UNAUTHENTICATED: "UAEX",  # refused: not (or wrongly) authenticated
    ErrorType.PERMISSION_DENIED: "UAEX",  # refused: not allowed
}
"""Envoy's short code for each reason the proxy answers itself."""
_OTHER_LOCAL_REPLY: Final = "LR"  # any other local answer (a filter's, a codec failure)
_RETRIED: Final = frozenset({"UF", "UT", "UR"})  # failures a retry policy may have retried
_CLIENT_ENDED: Final = frozenset({"abandoned", "reset"})  # the client went away, or reset it


def response_flags(event: RequestCompleted) -> str:
    """The Envoy-style flags of ``event``: ``-`` when the upstream answered.

    NR no route, NC no such cluster, UH no healthy upstream, UF upstream connect failure,
    UT upstream timeout, UR upstream reset, UPE upstream protocol error, DPE downstream
    protocol error (or a command the codec refuses), RL rate limited by a filter, UO
    upstream overflow (a circuit breaker), UAEX unauthenticated or not allowed, LR another
    local reply, DC the client went away (or reset its stream) first; URX is added when
    retries were used up.
    """
    if event.status in _CLIENT_ENDED:
        return "DC"
    error = event.error
    if error is None:
        return "-"
    flag = RESPONSE_FLAGS.get(error, _OTHER_LOCAL_REPLY)
    if flag == "RL" and event.cluster:
        flag = "UO"  # past routing, only circuit breakers answer "over limit"
    if flag in _RETRIED and event.attempts > 1:
        return f"{flag},URX"
    return flag


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
    start = wall_time - event.duration
    span = event.span
    record: dict[str, Any] = {
        "start_time": datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds"),
        "duration_ms": round(event.duration * 1000.0, 3),
        "listener": event.listener,
        "route": event.route or None,
        "cluster": event.cluster or None,
        "upstream_host": event.endpoint or None,
        "downstream_remote_address": event.peer or None,
        "codec": event.codec or None,
        "status": event.wire_status or None,
        "response_flags": response_flags(event),
        "bytes_received": event.bytes_received,
        "bytes_sent": event.bytes_sent,
        "attempts": event.attempts,
        "outcome": event.status,
        "error": None if event.error is None else event.error.value,
        "trace_id": None if span is None else f"{span.trace_id:032x}",
        "metadata": chosen,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class AccessLog:
    """Appends lines to a file path, or to stdout for ``"-"``.

    Lines are buffered and written out by ``flush()``, which the adapters call once per batch
    of core outputs, so a burst of completions costs one write. ``reopen()`` closes the file
    and opens the path again (after a rotation moved it away).
    """

    def __init__(self, target: str | IO[str], metadata: tuple[str, ...] = ()) -> None:
        self.metadata = metadata  # which routing properties each line carries
        self._path: str | None = None
        if isinstance(target, str):
            if target == "-":
                self._stream: IO[str] = sys.stdout
            else:
                self._path = target
                self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115
        else:
            self._stream = target
        self._pending: list[str] = []

    @property
    def path(self) -> str | None:
        """The file this log writes to (None for stdout or a stream given to it)."""
        return self._path

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

    def reopen(self) -> None:
        """Write out what is buffered, then reopen the path (a no-op for stdout or a stream).
        Raises OSError, keeping the old file, if the path cannot be opened."""
        self.flush()
        if self._path is None:
            return
        fresh = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        old, self._stream = self._stream, fresh
        old.close()

    def close(self) -> None:
        self.flush()
        if self._path is not None:
            self._stream.close()

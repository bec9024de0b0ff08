"""Admin HTTP endpoint, sans-IO on h11: ``/ready``, ``/stats/prometheus``, ``/stats/json``,
``/clusters``, ``/config_dump``.

``AdminConnection`` turns received bytes into bytes to send;
``metaprotocol.adapters.admin_core`` serves it through the same events and instructions as
the proxy's core, so every adapter does the socket work for it with the code it uses for
proxied connections. ``/stats/prometheus`` is rendered
by prometheus_client (``metaprotocol.metrics``); ``/clusters`` by ``metaprotocol.endpoints``.

The admin endpoint is bounded whatever a client does (docs/configuration.md, "admin"):
- answers are given a burst at a time, and a connection is neither read nor answered while
  its unwritten answers are above the write buffer's high watermark, so a client
  pipelining requests without reading the answers stops being read (its unread answers
  stay in the kernel's socket buffers; see ``AdminCore``);
- a request head is at most ``MAX_REQUEST_HEAD`` bytes (431 otherwise), and a request with
  a body is answered 413 and closed as soon as its head arrives (no route takes a body, so
  the body is never read);
- ``/config_dump`` of a config larger than about ``MAX_CONFIG_DUMP`` bytes of JSON is
  refused (503) after a walk that stops at that size, instead of being built in one go;
- the adapters close a connection idle for ``admin.idle_timeout`` and refuse connections
  beyond ``admin.max_connections`` (``AdmissionGate``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import h11

from metaprotocol import metrics
from metaprotocol.core.stats import EndpointStatus, StatsSnapshot
from metaprotocol.endpoints import clusters_json, clusters_text
from metaprotocol.snapshots import snapshot_to_json

__all__ = [
    "MAX_CONFIG_DUMP",
    "MAX_REQUEST_HEAD",
    "AdminApp",
    "AdminConnection",
    "AdmissionGate",
    "render_prometheus",
]

MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of one admin request head (request line and fields); larger is answered 431."""
MAX_CONFIG_DUMP = 4 * 1024 * 1024
"""About how many bytes of JSON ``/config_dump`` may answer; a larger config is refused."""


def render_prometheus(snapshot: StatsSnapshot, pids: Sequence[int] = ()) -> str:
    """The snapshot (plus process metrics) as Prometheus text (see metaprotocol.metrics)."""
    return metrics.render_prometheus(snapshot, pids).decode()


class AdminApp:
    """Answers the admin routes from callables evaluated per request.

    ``snapshot`` gives the stats (with the per-endpoint gauges), ``endpoints`` the
    ``/clusters`` view, ``pids`` the processes whose process metrics are summed (this one
    when not given)."""

    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        snapshot: Callable[[], StatsSnapshot],
        config_raw: Callable[[], Mapping[str, Any]],
        endpoints: Callable[[], Sequence[EndpointStatus]] = tuple,
        pids: Callable[[], Sequence[int]] | None = None,
    ) -> None:
        self._ready = ready
        self._snapshot = snapshot
        self._config_raw = config_raw
        self._endpoints = endpoints
        self._pids = pids if pids is not None else (lambda: (os.getpid(),))

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for one request."""
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/ready":
            if self._ready():
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", b"draining\n"
        if path == "/stats/prometheus":
            body = metrics.render_prometheus(self._snapshot(), self._pids())
            return 200, metrics.CONTENT_TYPE, body
        if path == "/clusters":
            statuses = self._endpoints()
            if "format=json" in query.split("&"):
                text = json.dumps(clusters_json(statuses), sort_keys=True)
                return 200, "application/json", text.encode() + b"\n"
            return 200, "text/plain; charset=utf-8", clusters_text(statuses).encode()
        if path == "/stats/json":
            text = json.dumps(snapshot_to_json(self._snapshot()), sort_keys=True)
            return 200, "application/json", text.encode() + b"\n"
        if path == "/config_dump":
            raw = dict(self._config_raw())
            if _json_size_exceeds(raw, MAX_CONFIG_DUMP):
                refusal = f"config too large to dump (over {MAX_CONFIG_DUMP} bytes of JSON)\n"
                return 503, "text/plain; charset=utf-8", refusal.encode()
            text = json.dumps(raw, indent=2, sort_keys=True, default=str)
            return 200, "application/json", text.encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found\n"


def _json_size_exceeds(value: object, limit: int) -> bool:
    """Whether ``value`` dumped as indented JSON would take more than about ``limit``
    bytes; the walk stops once past it, so it costs at most ``limit``'s worth of work."""
    total = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        total += 2 * depth + 4  # indentation, separators and the line break
        if isinstance(item, Mapping):
            for key, child in item.items():
                total += len(str(key)) + 4
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        else:
            total += len(str(item))
        if total > limit:
            return True
    return False


class AdmissionGate:
    """The cap on open admin connections, shared by one adapter's admin listener."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open = 0

    def admit(self) -> bool:
        """Count a new connection in; False (refuse it: close at once) when at the cap."""
        if self.open >= self.max_connections:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class AdminConnection:
    """One admin HTTP/1.1 connection, one request at a time.

    ``receive(data)`` takes bytes (``b""`` for end of stream) and returns ``(to_send,
    close_after)``: the answer to the next complete request (at most one per call) and
    whether to close once it is sent. ``take(data)`` only keeps the bytes; ``answer_next()``
    gives the answer to the next request already received, until it returns no bytes
    (``AdminCore`` decides when to call it). Keep-alive and pipelined requests are served
    in order.
    """

    def __init__(self, app: AdminApp) -> None:
        self._app = app
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._request: h11.Request | None = None

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        if not self.take(data):
            return b"", True
        return self.answer_next()

    def take(self, data: bytes) -> bool:
        """Keep ``data`` (``b""``: end of stream) for ``answer_next`` without answering;
        False when the connection is past serving (close it)."""
        if self._h11.their_state is h11.ERROR or self._h11.our_state is h11.ERROR:
            return False
        try:
            self._h11.receive_data(data)
        except RuntimeError:  # data after the end of stream: nothing more to serve
            return False
        return True

    def answer_next(self) -> tuple[bytes, bool]:
        """The answer to the next request already received (``b""`` if none is complete)."""
        conn = self._h11
        try:
            while True:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return b"", False
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return b"", True
                if isinstance(event, h11.Request):
                    if _has_body(event):
                        # Not read: no admin route takes a body (Content-Length 10**15 too).
                        body = b"admin requests take no body\n"
                        sent = b"" if event.method == b"HEAD" else body
                        out = self._send(413, "text/plain; charset=utf-8", sent, True, len(body))
                        return out, True
                    self._request = event
                elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                    out = self._answer(self._request)
                    self._request = None
                    return out, conn.our_state is not h11.DONE
        except h11.RemoteProtocolError as exc:
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return b"", True
            status = 431 if exc.error_status_hint == 431 else 400
            text = b"request head too large\n" if status == 431 else b"bad request\n"
            return self._send(status, "text/plain; charset=utf-8", text, True), True

    def _answer(self, request: h11.Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        status, content_type, body = self._app.respond(method, target)
        return self._send(status, content_type, b"" if method == "HEAD" else body, False, len(body))

    def _send(
        self, status: int, content_type: str, body: bytes, close: bool, length: int | None = None
    ) -> bytes:
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body) if length is None else length)),
        ]
        if close:
            headers.append(("connection", "close"))
        parts = [self._h11.send(h11.Response(status_code=status, headers=headers))]
        if body:
            parts.append(self._h11.send(h11.Data(data=body)))
        parts.append(self._h11.send(h11.EndOfMessage()))
        return b"".join(p for p in parts if p)


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False

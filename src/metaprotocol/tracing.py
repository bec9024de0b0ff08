"""Export the core's request spans with the OpenTelemetry SDK (OTLP/HTTP), off the event loop.

The core decides which requests are traced and gives each its ids and its upstream trace
context (metaprotocol.core.tracing); its ``RequestCompleted`` event carries the span's
ids, and everything else a span needs (timing, listener, route, cluster, upstream host,
codec, status). Here each such event becomes a finished SDK span handed to a
``BatchSpanProcessor``: its worker thread batches and POSTs them to
``<otlp_endpoint>/v1/traces``, so the event loop only appends to a queue (a full queue
drops spans rather than blocking). Needs the ``[otel]`` extra.
"""

from __future__ import annotations

from typing import Any

from metaprotocol.core.config import TracingConfig
from metaprotocol.core.outputs import RequestCompleted

__all__ = ["OTEL_EXTRA_HINT", "OTEL_PROTO_CLASH_HINT", "SpanExporter", "otel_hint", "traces_url"]

OTEL_EXTRA_HINT = "tracing needs the otel extra: pip install 'metaprotocol[otel]'"
# xds-protos ships its own, older copy of the OpenTelemetry .proto modules in the same
# package directory; installed after opentelemetry-proto (pip's order is not fixed), it
# replaces them and the OTLP exporter fails to import (no ``InstrumentationScope``).
OTEL_PROTO_CLASH_HINT = (
    "tracing: opentelemetry-proto's modules were replaced by an older copy (xds-protos ships "
    "one); restore them: pip install --force-reinstall --no-deps "
    "opentelemetry-proto==$(pip show opentelemetry-proto | sed -n 's/^Version: //p')"
)


def otel_hint(exc: ImportError) -> str:
    """What to tell the operator for an ImportError raised by importing the SDK: the
    missing extra, or the xds-protos clash when the modules exist but lack a name."""
    missing_module = isinstance(exc, ModuleNotFoundError)
    return OTEL_EXTRA_HINT if missing_module else OTEL_PROTO_CLASH_HINT


_ERROR_OUTCOMES = frozenset({"error", "local_error"})


def traces_url(otlp_endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base address (``/v1/traces`` appended,
    as the OTLP exporter specification says for a base endpoint), or the URL as given when
    it already names that path."""
    base = otlp_endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


class SpanExporter:
    """Turns ``RequestCompleted`` events with a span into exported OpenTelemetry spans."""

    def __init__(self, config: TracingConfig, *, schedule_delay: float = 1.0) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
            from opentelemetry.trace.status import Status, StatusCode
        except ImportError as exc:  # the same error, saying what to install
            raise ModuleNotFoundError(otel_hint(exc), name=exc.name) from exc
        from metaprotocol import __version__

        self.config = config
        self._span_type = ReadableSpan
        self._context_type = SpanContext
        self._trace_state = TraceState
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._unset = Status(StatusCode.UNSET)
        self._resource = Resource.create({"service.name": config.service_name})
        self._scope = InstrumentationScope("metaprotocol", __version__)
        # Bounded waits: a collector that is down must not hold a drain for long.
        exporter = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint), timeout=5.0)
        self._processor: Any = BatchSpanProcessor(
            exporter, schedule_delay_millis=schedule_delay * 1000.0, export_timeout_millis=5000
        )

    def record(self, event: RequestCompleted, wall_time: float) -> None:
        """Queue the span of ``event`` (finished at ``wall_time``) for export, if it has one."""
        span = event.span
        if span is None:
            return
        end = int(wall_time * 1e9)
        start = end - int(event.duration * 1e9)
        state = self._trace_state.from_header([span.tracestate]) if span.tracestate else None
        context = self._context_type(span.trace_id, span.span_id, False, self._sampled, state)
        parent = None
        if span.parent_span_id:
            parent = self._context_type(span.trace_id, span.parent_span_id, True, self._sampled)
        attributes: dict[str, str | int] = {
            "metaprotocol.listener": event.listener,
            "metaprotocol.codec": event.codec,
            "metaprotocol.outcome": event.status,
            "metaprotocol.attempts": event.attempts,
        }
        optional = (
            ("metaprotocol.route", event.route),
            ("metaprotocol.cluster", event.cluster),
            ("metaprotocol.upstream_host", event.endpoint),
            ("metaprotocol.status", event.wire_status),
            ("metaprotocol.error", "" if event.error is None else event.error.value),
            ("client.address", event.peer),
        )
        for key, value in optional:
            if value:
                attributes[key] = value
        finished = self._span_type(
            name=f"{event.listener} {event.route}" if event.route else event.listener,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=self._server,
            status=self._error if event.status in _ERROR_OUTCOMES else self._unset,
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(finished)

    def close(self) -> None:
        """Export what is queued (bounded by the SDK's export timeout) and stop the thread."""
        self._processor.shutdown()

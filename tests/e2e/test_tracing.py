"""Tracing end to end: spans reach an OTLP/HTTP receiver, the upstream sees the child context.

The receiver is an ``http.server`` that decodes each export with the OpenTelemetry
project's generated protobuf classes (``opentelemetry-proto``). HTTP goes through the
proxy to a Python server that records the ``traceparent`` it got; Dubbo goes to the sample
provider, whose ``EchoService.attachments()`` returns the attachments it received.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import Config
from metaprotocol.samples.dubbo_provider import ECHO
from metaprotocol.testing.serving import start_proxy
from tests.e2e.servers import DEADLINE, EchoHTTPHandler, dubbo_provider, http_server, proxy_config

EXAMPLE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_HEX = "0af7651916cd43dd8448eb211c80319c"
PARENT_HEX = "b7ad6b7169203331"


class _Receiver(http.server.BaseHTTPRequestHandler):
    """OTLP/HTTP traces endpoint: keeps every decoded span with its resource attributes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        server: Any = self.server
        server.paths.append(self.path)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    server.spans.append((resource, span))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        value = pair.value
        kind = value.WhichOneof("value")
        out[pair.key] = getattr(value, kind) if kind else None
    return out


@contextlib.contextmanager
def _otlp_receiver() -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    server.spans = []
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


class _TraceparentHandler(EchoHTTPHandler):
    """Answers ``GET /hello`` and records the ``traceparent`` each request carried."""

    def do_GET(self) -> None:
        server: Any = self.server
        server.seen.append(self.headers.get("traceparent"))
        super().do_GET()


def _tracing(receiver: Any) -> dict[str, Any]:
    port = receiver.server_address[1]
    return {"otlp_endpoint": f"http://127.0.0.1:{port}", "service_name": "edge-proxy"}


def test_http_spans_reach_the_collector_and_the_upstream_gets_the_child(adapter: str) -> None:
    with _otlp_receiver() as receiver, http_server(_TraceparentHandler) as upstream:
        upstream_any: Any = upstream
        upstream_any.seen = []
        config = proxy_config("http1", {"web": [upstream.server_address[1]]}, admin=False)
        config = _with_tracing(config, _tracing(receiver))
        with start_proxy(config, adapter) as running:
            base = f"http://127.0.0.1:{running.ports['http1']}"
            with httpx.Client(base_url=base, timeout=DEADLINE) as client:
                continued = client.get("/hello", headers={"traceparent": EXAMPLE})
                fresh = client.get("/hello")
            assert continued.status_code == fresh.status_code == 200
        # Leaving the block closed the proxy, which exports what is queued.
    spans = [span for _, span in receiver.spans]
    assert len(spans) == 2, spans
    assert set(receiver.paths) == {"/v1/traces"}
    by_parent = {span.parent_span_id.hex(): span for span in spans}
    child = by_parent[PARENT_HEX]
    root = by_parent[""]
    assert child.trace_id.hex() == TRACE_HEX
    assert root.trace_id.hex() != TRACE_HEX
    seen = upstream_any.seen
    assert seen == [
        f"00-{TRACE_HEX}-{child.span_id.hex()}-01",
        f"00-{root.trace_id.hex()}-{root.span_id.hex()}-01",
    ]
    attributes = _attributes(child.attributes)
    assert attributes["metaprotocol.listener"] == "http1"
    assert attributes["metaprotocol.route"] == "default"
    assert attributes["metaprotocol.cluster"] == "web"
    assert attributes["metaprotocol.upstream_host"] == f"127.0.0.1:{upstream.server_address[1]}"
    assert attributes["metaprotocol.codec"] == "http1"
    assert attributes["metaprotocol.status"] == "200"
    assert child.end_time_unix_nano >= child.start_time_unix_nano > 0
    resource = receiver.spans[0][0]
    assert resource["service.name"] == "edge-proxy"


def test_dubbo_provider_receives_the_child_context_as_an_attachment() -> None:
    # One adapter: the attachment is written by the codec, the same on every adapter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tests.e2e.dubbo_frames import DubboClient
    from tests.e2e.test_dubbo import _close_client_connection

    with _otlp_receiver() as receiver, dubbo_provider() as provider:
        config = _with_tracing(
            proxy_config("dubbo", {"v1": [provider]}, admin=False), _tracing(receiver)
        )
        with start_proxy(config, "asyncio") as running:
            host = f"127.0.0.1:{running.ports['dubbo']}"
            try:
                echo = DubboClient(ECHO, group="", version="1.0.0", host=host)
                seen = echo.call("attachments", timeout=DEADLINE)
                # The client's own context travels as an attachment too: it is continued.
                continued = echo.call(
                    "attachments", context={"traceparent": EXAMPLE}, timeout=DEADLINE
                )
            finally:
                _close_client_connection(host)
    root, child = (span for _, span in receiver.spans)
    assert root.parent_span_id == b""  # the client sent no trace context: a new trace
    assert seen["traceparent"] == f"00-{root.trace_id.hex()}-{root.span_id.hex()}-01"
    assert _attributes(root.attributes)["metaprotocol.status"] == "20"
    assert (child.trace_id.hex(), child.parent_span_id.hex()) == (TRACE_HEX, PARENT_HEX)
    assert continued["traceparent"] == f"00-{TRACE_HEX}-{child.span_id.hex()}-01"


def _with_tracing(config: Config, tracing: dict[str, Any]) -> Config:
    """``config`` (a loaded Config) with a ``tracing`` section, loaded the same way."""
    raw = dict(config.raw)
    raw["tracing"] = tracing
    return parse_config(raw)

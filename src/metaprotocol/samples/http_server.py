"""A small threaded HTTP/1.1 upstream that names itself, for the demo and end-to-end tests.

Every request (any method, any path) gets ``200 OK`` with a JSON body
``{"upstream": NAME, "method": ..., "path": ...}`` and an ``X-Upstream: NAME`` header, so a
client behind a proxy can tell which upstream answered. Connections are kept alive (HTTP/1.1).
Run it with ``python -m metaprotocol.samples.http_server --port 8081 --name web`` or::

    with HttpServer(name="web") as server:
        host, port = server.address
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["HttpServer", "main"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a proxy's pooled connections expect
    # Headers and body are written separately: without TCP_NODELAY, Nagle's algorithm and
    # the peer's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        name = self.server.upstream_name
        body = json.dumps({"upstream": name, "method": self.command, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints its own report


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a kept-alive connection must not hold up shutdown
    upstream_name = "http"


class HttpServer:
    """A threaded HTTP/1.1 server on a loopback port (0 picks a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, name: str = "http") -> None:
        self.name = name
        self._server = _Server((host, port), _Handler)
        self._server.upstream_name = name
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread: threading.Thread | None = None

    def start(self) -> HttpServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"http-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the listening socket (open keep-alive threads are daemons)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--name", default="http", help="what X-Upstream and the body say")
    args = parser.parse_args(argv)
    server = HttpServer(args.host, args.port, name=args.name)
    host, port = server.address
    print(f"http sample upstream {args.name!r} on {host}:{port}", flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()


if __name__ == "__main__":
    main()

"""A small Thrift ``Calculator`` server (thriftpy2) used by the demo and the end-to-end tests.

Run it with ``python -m metaprotocol.samples.thrift_server --port 9090 --transport framed
--protocol binary`` or from code::

    with ThriftServer(transport="buffered", protocol="compact") as server:
        host, port = server.address
        ...

Methods: ``ping()``, ``add(i32, i32)``, ``echo(string)``, ``divide(i32, i32)`` (throws the
declared ``DivideByZero``), ``whoami()`` (the server's name, so tests can tell upstreams apart)
and ``oneway zip(string)``. With ``multiplexed`` set, the service is registered under that name
of a TMultiplexedProcessor and clients must call ``Name:method``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import threading
from types import ModuleType, TracebackType
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TMultiplexedProcessor, TProcessor
from thriftpy2.transport import (
    TBufferedTransportFactory,
    TFramedTransportFactory,
    TSocket,
    TTransportException,
)

__all__ = [
    "CALCULATOR_IDL",
    "Calculator",
    "CalculatorHandler",
    "ThriftServer",
    "calculator",
    "main",
]

CALCULATOR_IDL = """
exception DivideByZero {
  1: string message,
}

service Calculator {
  void ping(),
  i32 add(1: i32 num1, 2: i32 num2),
  string echo(1: string text),
  i32 divide(1: i32 num, 2: i32 den) throws (1: DivideByZero err),
  string whoami(),
  oneway void zip(1: string note),
}
"""

calculator: ModuleType = thriftpy2.load_fp(
    io.StringIO(CALCULATOR_IDL), module_name="metaprotocol_calculator_thrift"
)
Calculator: Any = calculator.Calculator

_TRANSPORTS: dict[str, Any] = {
    "framed": TFramedTransportFactory,
    "buffered": TBufferedTransportFactory,
}
_PROTOCOLS: dict[str, Any] = {"binary": TBinaryProtocolFactory, "compact": TCompactProtocolFactory}


_TSocket: Any = TSocket  # untyped in thriftpy2


class CalculatorHandler:
    """The service implementation; ``zipped`` collects the notes sent with oneway ``zip``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.zipped: list[str] = []

    def ping(self) -> None:
        return None

    def add(self, num1: int, num2: int) -> int:
        return num1 + num2

    def echo(self, text: str) -> str:
        return text

    def divide(self, num: int, den: int) -> int:
        if den == 0:
            raise calculator.DivideByZero(message="division by zero")
        return num // den

    def whoami(self) -> str:
        return self.name

    def zip(self, note: str) -> None:
        self.zipped.append(note)


class ThriftServer:
    """A threaded Calculator server on a loopback port (0 picks a free one)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        transport: str = "framed",
        protocol: str = "binary",
        multiplexed: str | None = None,
        name: str = "calculator",
    ) -> None:
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport: expected framed|buffered, got {transport!r}")
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol: expected binary|compact, got {protocol!r}")
        self.handler = CalculatorHandler(name)
        self._transport_factory = _TRANSPORTS[transport]()
        self._protocol_factory = _PROTOCOLS[protocol]()
        processor = TProcessor(Calculator, self.handler)
        if multiplexed is not None:
            mux = TMultiplexedProcessor()
            mux.register_processor(multiplexed, processor)
            processor = mux
        self._processor = processor
        self._listener = socket.create_server((host, port))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> ThriftServer:
        """Serve in a background thread; returns self."""
        thread = threading.Thread(target=self.serve_forever, name="thrift-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def serve_forever(self) -> None:
        """Accept connections until ``stop()``; one thread per connection."""
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stopped.is_set():
                    conn.close()
                    break
                self._clients.add(conn)
            thread = threading.Thread(target=self._serve_client, args=(conn,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve_client(self, conn: socket.socket) -> None:
        raw = _TSocket(sock=conn)
        itrans = self._transport_factory.get_transport(raw)
        otrans = self._transport_factory.get_transport(raw)
        iprot = self._protocol_factory.get_protocol(itrans)
        oprot = self._protocol_factory.get_protocol(otrans)
        try:
            while not self._stopped.is_set():
                self._processor.process(iprot, oprot)
        except (TTransportException, OSError, EOFError):
            pass  # the peer closed: drop the connection
        except Exception:
            pass  # garbage from the peer: a sample server drops the connection and lives on
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    def stop(self) -> None:
        """Stop accepting, close every connection and wait for the threads."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in list(self._clients):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> ThriftServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--transport", choices=sorted(_TRANSPORTS), default="framed")
    parser.add_argument("--protocol", choices=sorted(_PROTOCOLS), default="binary")
    parser.add_argument("--multiplexed", metavar="SERVICE", help="register under this name")
    parser.add_argument("--name", default="calculator", help="what whoami() answers")
    args = parser.parse_args(argv)
    server = ThriftServer(
        args.host,
        args.port,
        transport=args.transport,
        protocol=args.protocol,
        multiplexed=args.multiplexed,
        name=args.name,
    )
    host, port = server.address
    print(f"thrift {args.transport}/{args.protocol} Calculator on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

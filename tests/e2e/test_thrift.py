"""Thrift end to end: Apache thrift and thriftpy2 on either side of the proxy, routed by method.

Every combination of transport (framed, buffered = the codec's ``unframed``) and protocol
(binary, compact) runs both ways: an Apache ``thrift`` client against thriftpy2 servers
(``metaprotocol.samples.thrift_server``) and a thriftpy2 client against Apache thrift servers
(tests/e2e/thrift_peers.py). Two upstreams, routes on ``method``: ``whoami`` goes to
upstream "b", ``add``/``echo``/``divide``/``ping`` to "a", anything else has no route.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from thrift.Thrift import TApplicationException, TType
from thriftpy2 import protocol as thriftpy2_protocol
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException as PyTApplicationException
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from metaprotocol.samples.thrift_server import Calculator, ThriftServer, calculator
from metaprotocol.testing.serving import start_proxy
from tests.e2e.servers import DEADLINE, proxy_config
from tests.e2e.thrift_peers import ApacheCalculatorClient, apache_calculator_server

TBinaryProtocolFactory: Any = thriftpy2_protocol.TBinaryProtocolFactory  # untyped in thriftpy2
TCompactProtocolFactory: Any = thriftpy2_protocol.TCompactProtocolFactory
TRANSPORTS = ("framed", "buffered")
PROTOCOLS = ("binary", "compact")
ROUTES: list[dict[str, Any]] = [
    {"name": "who", "match": {"metadata": {"method": {"exact": "whoami"}}},
     "route": {"cluster": "b"}},
    {"name": "math", "match": {"metadata": {"method": {"regex": "add|echo|divide|ping"}}},
     "route": {"cluster": "a"}},
]  # fmt: skip


def _codec_options(transport: str, protocol: str) -> dict[str, Any]:
    return {
        "codec_options": {
            "transport": "framed" if transport == "framed" else "unframed",
            "protocol": protocol,
        }
    }


@contextlib.contextmanager
def _thriftpy2_servers(transport: str, protocol: str) -> Iterator[tuple[int, int]]:
    with (
        ThriftServer(transport=transport, protocol=protocol, name="a") as a,
        ThriftServer(transport=transport, protocol=protocol, name="b") as b,
    ):
        yield a.address[1], b.address[1]


@contextlib.contextmanager
def _apache_servers(transport: str, protocol: str) -> Iterator[tuple[int, int]]:
    with (
        apache_calculator_server("a", transport, protocol) as a,
        apache_calculator_server("b", transport, protocol) as b,
    ):
        yield a, b


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_apache_client_to_thriftpy2_server(adapter: str, transport: str, protocol: str) -> None:
    with _thriftpy2_servers(transport, protocol) as (a, b):
        config = proxy_config(
            "thrift", {"a": [a], "b": [b]}, ROUTES, listener=_codec_options(transport, protocol)
        )
        with start_proxy(config, adapter) as running:
            client = ApacheCalculatorClient(running.ports["thrift"], transport, protocol)
            try:
                for i in range(20):
                    assert client.call("add", [(1, TType.I32, i), (2, TType.I32, 1000)]) == i + 1000
                text = "héllo " * 2000
                assert client.call("echo", [(1, TType.STRING, text)]) == text
                assert client.call("whoami", []) == "b"  # routed by method to upstream b
                assert client.call("ping", []) is None
                with pytest.raises(TApplicationException) as caught:
                    client.call("nosuch", [])
                assert caught.value.type == TApplicationException.UNKNOWN_METHOD
                # The connection survives the proxy's error reply.
                assert client.call("add", [(1, TType.I32, 2), (2, TType.I32, 3)]) == 5
            finally:
                client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_thriftpy2_client_to_apache_server(adapter: str, transport: str, protocol: str) -> None:
    proto_factory = TBinaryProtocolFactory() if protocol == "binary" else TCompactProtocolFactory()
    trans_factory = (
        TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory()
    )
    with _apache_servers(transport, protocol) as (a, b):
        config = proxy_config(
            "thrift", {"a": [a], "b": [b]}, ROUTES, listener=_codec_options(transport, protocol)
        )
        with start_proxy(config, adapter) as running:
            client: Any = make_client(
                Calculator,
                "127.0.0.1",
                running.ports["thrift"],
                proto_factory=proto_factory,
                trans_factory=trans_factory,
                timeout=int(DEADLINE * 1000),
            )
            try:
                assert [client.add(i, 7) for i in range(20)] == [i + 7 for i in range(20)]
                assert client.echo("x" * 100_000) == "x" * 100_000
                assert client.whoami() == "b"
                # `divide` is routed to upstream a, whose Apache server does not implement it:
                # the server's TApplicationException passes through the proxy untouched.
                with pytest.raises(PyTApplicationException) as caught:
                    client.divide(1, 0)
                assert caught.value.type == PyTApplicationException.UNKNOWN_METHOD
                assert "unknown method divide" in str(caught.value.message)
                # `zip` has no route: the proxy itself answers (oneway: no answer at all),
                # and the connection keeps working.
                client.zip("note")
                assert client.add(2, 3) == 5
            finally:
                client.close()


def test_declared_exception_passes_through(adapter: str) -> None:
    with _thriftpy2_servers("framed", "binary") as (a, b):
        config = proxy_config(
            "thrift", {"a": [a], "b": [b]}, ROUTES, listener=_codec_options("framed", "binary")
        )
        with start_proxy(config, adapter) as running:
            client: Any = make_client(
                Calculator,
                "127.0.0.1",
                running.ports["thrift"],
                proto_factory=TBinaryProtocolFactory(),
                trans_factory=TFramedTransportFactory(),
                timeout=int(DEADLINE * 1000),
            )
            try:
                with pytest.raises(calculator.DivideByZero):
                    client.divide(1, 0)
                assert client.divide(9, 3) == 3
            finally:
                client.close()

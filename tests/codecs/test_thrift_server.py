"""The sample Thrift server answers real clients, and its replies decode with ThriftCodec."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest
import thriftpy2.protocol
import thriftpy2.transport
from thriftpy2.rpc import make_client

from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ResponseStatus
from metaprotocol.samples.thrift_server import Calculator, ThriftServer, calculator

PY_PROTOCOL: Any = thriftpy2.protocol  # thriftpy2's factories are untyped
PY_TRANSPORT: Any = thriftpy2.transport
TRANSPORTS: dict[str, Any] = {
    "framed": PY_TRANSPORT.TFramedTransportFactory,
    "buffered": PY_TRANSPORT.TBufferedTransportFactory,
}
PROTOCOLS: dict[str, Any] = {
    "binary": PY_PROTOCOL.TBinaryProtocolFactory,
    "compact": PY_PROTOCOL.TCompactProtocolFactory,
}


def roundtrip(address: tuple[str, int], frame: bytes, codec: ThriftCodec) -> Message:
    """Send one request frame on a raw socket and decode the reply."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(frame)
        buf = bytearray()
        while True:
            chunk = sock.recv(65536)
            assert chunk, "server closed before replying"
            buf += chunk
            result = codec.decode(buf)
            if result is not NEED_DATA:
                assert isinstance(result, Message)
                return result


@pytest.mark.parametrize("transport", ["framed", "buffered"])
@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_sample_server_with_thriftpy2_client(transport: str, protocol: str) -> None:
    with ThriftServer(transport=transport, protocol=protocol, name="s1") as server:
        host, port = server.address
        client: Any = make_client(
            Calculator,
            host,
            port,
            proto_factory=PROTOCOLS[protocol](),
            trans_factory=TRANSPORTS[transport](),
            timeout=10_000,
        )
        try:
            assert client.add(20, 22) == 42
            assert client.echo("héllo") == "héllo"
            assert client.whoami() == "s1"
            client.ping()
            with pytest.raises(calculator.DivideByZero):
                client.divide(1, 0)
            client.zip("note")
            assert client.add(1, 1) == 2  # the oneway call was handled in order
            assert server.handler.zipped == ["note"]
        finally:
            client.close()


def test_sample_server_replies_decode_with_the_codec() -> None:
    # Request frames in the exact wire form Apache and node clients send (wire vectors).
    framed_add = bytes.fromhex(
        "0000001e800100010000000361646400000001080001000000140800020000001600"
    )
    with ThriftServer(transport="framed", protocol="binary") as server:
        reply = roundtrip(server.address, framed_add, ThriftCodec(Side.UPSTREAM, {}, 1 << 20))
        assert reply.request_id == 1
        assert reply.properties == {"method": "add", "message_type": "reply"}
        assert reply.status is ResponseStatus.OK
        # A seqid rewritten by the codec comes back in the reply.
        request = ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20).decode(bytearray(framed_add))
        assert isinstance(request, Message)
        upstream = ThriftCodec(Side.UPSTREAM, {}, 1 << 20)
        rewritten = upstream.encode(request, request_id=0x7FFF0001)
        assert roundtrip(server.address, rewritten, upstream).request_id == 0x7FFF0001
        # An error reply the codec builds is one the server's peers (clients) can read too.
        error = upstream.encode_error(request, ErrorType.ROUTE_NOT_FOUND, "no route")
        assert error is not None and error.startswith(b"\x00\x00\x00")


def test_sample_server_declared_exception_is_error_status() -> None:
    # divide(1, 0), seqid 5, compact unframed: 0x82, CALL|v1, seqid, name, i32 1, i32 0, stop.
    compact_divide = bytes.fromhex("82210506646976696465" + "1502" + "1500" + "00")
    with ThriftServer(transport="buffered", protocol="compact") as server:
        codec = ThriftCodec(Side.UPSTREAM, {"transport": "unframed", "protocol": "compact"}, 4096)
        reply = roundtrip(server.address, compact_divide, codec)
        assert reply.request_id == 5
        assert reply.status is ResponseStatus.ERROR
        assert reply.properties["message_type"] == "reply"


def test_sample_server_multiplexed() -> None:
    with ThriftServer(multiplexed="Calculator") as server:
        host, port = server.address
        client: Any = make_client(
            Calculator,
            host,
            port,
            proto_factory=PY_PROTOCOL.TMultiplexedProtocolFactory(
                PY_PROTOCOL.TBinaryProtocolFactory(), "Calculator"
            ),
            trans_factory=PY_TRANSPORT.TFramedTransportFactory(),
            timeout=10_000,
        )
        try:
            assert client.add(2, 3) == 5
        finally:
            client.close()


def test_sample_server_command_line() -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "metaprotocol.samples.thrift_server", "--port", "0"),
            *("--transport", "buffered", "--protocol", "compact"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "buffered/compact" in line
        port = int(line.rsplit(":", 1)[1])
        client: Any = make_client(
            Calculator,
            "127.0.0.1",
            port,
            proto_factory=PY_PROTOCOL.TCompactProtocolFactory(),
            trans_factory=PY_TRANSPORT.TBufferedTransportFactory(),
            timeout=10_000,
        )
        try:
            assert client.add(40, 2) == 42
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

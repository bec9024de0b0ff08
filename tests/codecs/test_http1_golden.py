"""Http1Codec against bytes written by real clients: a recorded and a live curl request."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, MessageType
from tests.peers import require_binary

DATA = Path(__file__).parent / "data"
BODY = b'{"name": "metaprotocol"}'


def decode_both_ways(frame: bytes, parser: str) -> Message:
    """Whole and byte-at-a-time decoding give the same single message."""
    whole = Http1Codec(Side.DOWNSTREAM, {"parser": parser}, 1 << 20)
    buffer = bytearray(frame)
    message = whole.decode(buffer)
    assert isinstance(message, Message) and not buffer
    slow = Http1Codec(Side.DOWNSTREAM, {"parser": parser}, 1 << 20)
    buffer = bytearray()
    for index, byte in enumerate(frame):
        buffer.append(byte)
        result = slow.decode(buffer)
        if index < len(frame) - 1:
            assert result is NEED_DATA
    assert isinstance(result, Message) and result.frame == frame
    assert result.properties == message.properties
    return message


@pytest.mark.parametrize("parser", ["fast", "h11"])
def test_recorded_curl_post(parser: str) -> None:
    frame = (DATA / "http1_curl_post.bin").read_bytes()
    message = decode_both_ways(frame, parser)
    assert message.type is MessageType.REQUEST and message.frame == frame
    props = message.properties
    assert props[":method"] == "POST"
    assert props[":path"] == "/api/v1/items?limit=10"
    assert props[":authority"] == "127.0.0.1:36727"
    assert props["user-agent"].startswith("curl/")
    assert props["x-request-id"] == "rec-1"
    assert props["content-length"] == str(len(BODY))
    assert message.body_size == len(BODY) and frame.endswith(BODY)


def record_curl(curl: str, extra: list[str]) -> bytes:
    """Run curl against a one-shot local server; return the bytes curl sent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            codec = Http1Codec(Side.DOWNSTREAM, {}, 1 << 20)
            while True:  # our own codec says when the request is complete
                data = conn.recv(65536)
                if not data:
                    break
                received.extend(data)
                if codec.decode(bytearray(received)) is not NEED_DATA:
                    break
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        out = subprocess.run(
            [curl, "-s", *extra, f"http://127.0.0.1:{port}/live/path?x=1"],
            capture_output=True,
            timeout=20,
            check=True,
        )
    finally:
        thread.join(timeout=20)
        server.close()
    assert out.stdout == b"ok"
    return bytes(received)


@pytest.mark.parametrize("parser", ["fast", "h11"])
def test_live_curl_requests(parser: str) -> None:
    curl = require_binary("curl")
    get = record_curl(curl, ["-H", "X-Live: 1"])
    message = decode_both_ways(get, parser)
    assert message.properties[":method"] == "GET"
    assert message.properties[":path"] == "/live/path?x=1"
    assert message.properties["x-live"] == "1"
    chunked = record_curl(
        curl, ["-H", "Transfer-Encoding: chunked", "--data-binary", "chunky body"]
    )
    message = decode_both_ways(chunked, parser)
    assert message.properties["transfer-encoding"] == "chunked"
    assert b"chunky body" in message.frame and message.frame.endswith(b"0\r\n\r\n")

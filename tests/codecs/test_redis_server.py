"""Redis codec against a real redis-server: the server must frame and split requests like we do.

Inline commands are the tricky part (quotes, escapes, odd whitespace, empty lines): we send
``ECHO <random arguments>`` lines, and the server's answer shows how it split them.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.request import split_inline
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message
from tests.peers import require_binary

MAX = 1 << 20


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    binary = require_binary("redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def exchange(port: int, data: bytes, replies: int) -> list[Message]:
    """Send ``data`` and decode ``replies`` replies (fewer if the server closes)."""
    codec = RedisCodec(Side.UPSTREAM, {}, MAX)
    buffer = bytearray()
    out: list[Message] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        while len(out) < replies:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while (message := codec.decode(buffer)) is not NEED_DATA:
                assert isinstance(message, Message)
                out.append(message)
    return out


def bulk_text(message: Message) -> bytes:
    """The payload of a ``$len`` reply."""
    header, _, rest = message.frame.partition(b"\r\n")
    assert header.startswith(b"$"), message.frame
    return rest[: int(header[1:])]


_PIECES = [b"a", b"b", b"x", b" ", b"  ", b"\t", b'"', b"'", b"\\", b"\\x4", b"1", b"\x0b", b"n"]
_QUOTED = [b'"a b"', b"'c d'", b'"\\x41\\x4g"', b'"\\n\\t\\"\\\\"', b"'it\\'s'", b'""', b"'\\n'"]


def random_line(rng: random.Random) -> bytes:
    pieces = _PIECES + _QUOTED * 2
    return b"ECHO " + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))


def test_inline_splitting_matches_the_server(server_port: int) -> None:
    rng = random.Random(1234)
    lines = [random_line(rng) for _ in range(3000)]
    lines = [line for line in lines if split_inline(line) is not None][:400]
    stream = b"\r\n".join(lines) + b"\r\n"
    decoded: list[Message] = []
    buffer = bytearray(stream)
    codec = RedisCodec(Side.DOWNSTREAM, {}, MAX)
    while (message := codec.decode(buffer)) is not NEED_DATA:
        assert isinstance(message, Message)
        decoded.append(message)
    assert len(decoded) == len(lines)
    replies = exchange(server_port, stream, len(lines))
    assert len(replies) == len(lines)
    for line, reply in zip(lines, replies, strict=True):
        arguments = split_inline(line)
        assert arguments is not None
        if len(arguments) == 2:
            assert bulk_text(reply) == arguments[1], line
        else:
            assert reply.frame.startswith(b"-ERR wrong number of arguments"), (line, reply.frame)


@pytest.mark.parametrize("line", [b'ECHO "abc', b"ECHO 'abc", b'ECHO "a"b', b"ECHO 'a'b"])
def test_unbalanced_quotes_are_an_error_for_the_server_too(server_port: int, line: bytes) -> None:
    assert split_inline(line) is None
    (reply,) = exchange(server_port, line + b"\r\n", 1)
    assert b"unbalanced quotes" in reply.frame


def test_empty_commands_and_mixed_framing_give_one_reply_per_request(server_port: int) -> None:
    stream = (
        b"\r\n*0\r\n*-1\r\nPING\r\n   \n*2\r\n$4\r\nECHO\r\n$3\r\na\r\n\r\n"
        b"ECHO b\n*1\r\n$4\r\nPING\r\n"
    )
    codec = RedisCodec(Side.DOWNSTREAM, {}, MAX)
    buffer = bytearray(stream)
    keys = []
    while (message := codec.decode(buffer)) is not NEED_DATA:
        assert isinstance(message, Message)
        keys.append(message.properties.get("key"))
    assert keys == [None, "a\r\n", "b", None]
    replies = exchange(server_port, stream, len(keys))
    assert [r.frame for r in replies] == [
        b"+PONG\r\n",
        b"$3\r\na\r\n\r\n",
        b"$1\r\nb\r\n",
        b"+PONG\r\n",
    ]

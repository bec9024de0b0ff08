"""Redis (RESP) harnesses: commands decoded downstream, replies decoded upstream, one at a
time (``decode``) or merged (``decode_many``, as the core pipelines them).

Selector: bit 0 ``decode_many`` (its limit: bits 4-7, plus one), bit 1 small limits
(``max_array_length`` 8, ``max_nesting_depth`` 4, ``max_inline_size`` 64), bit 2 a small
``max_message_size`` (512 bytes instead of 64 KiB), bit 3 (``decode_many`` downstream)
whether merged commands take the same route.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis import request as redis_request
from metaprotocol.core.codec import Side
from metaprotocol.core.message import Message, MessageType, NeedData

from .common import DATA_DIR, Finding, check_encodes, drive, split_input

__all__ = ["request", "request_seeds", "response", "response_seeds"]

_SMALL = {"max_array_length": 8, "max_nesting_depth": 4, "max_inline_size": 64}
_NAME_CACHE_LIMIT = 4096  # the module-wide command-name cache must stay bounded


def _run(data: bytes, side: Side) -> None:
    selector, chunk, wire = split_input(data)
    options: dict[str, Any] = dict(_SMALL) if selector & 2 else {}
    limit = 512 if selector & 4 else 64 * 1024
    codec = RedisCodec(side, options, limit)
    other = RedisCodec(
        Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM, options, limit
    )
    decode: Callable[[bytearray], Message | NeedData] | None = None
    if selector & 1:
        many = (selector >> 4) + 1
        same = bool(selector & 8)
        if side is Side.DOWNSTREAM:

            def decode(buffer: bytearray) -> Message | NeedData:
                return codec.decode_many(buffer, many, lambda first, other: same)
        else:

            def decode(buffer: bytearray) -> Message | NeedData:
                return codec.decode_many(buffer, many)

    def on_message(message: Message) -> None:
        # Replies pass through. Commands may not (an inline one goes upstream as the RESP
        # array of its arguments): what goes upstream must decode to the same commands.
        check_encodes(other, message, passthrough=side is Side.UPSTREAM)
        if side is Side.DOWNSTREAM and message.type is MessageType.REQUEST:
            sent = other.encode(message)
            again = drive(RedisCodec(side, {}, 1 << 20), sent, 0, 1 << 20)
            wanted = {k: message.properties.get(k) for k in ("command", "key")}
            got = [{k: m.properties.get(k) for k in wanted} for m in again[:1]]
            if got != [wanted] or len(again) != message.count:
                raise Finding(f"{message!r} went upstream as {sent!r}")

    drive(codec, wire, chunk, limit, decode=decode, on_message=on_message)
    if len(redis_request._COMMAND_NAMES) > _NAME_CACHE_LIMIT:
        raise Finding(f"{len(redis_request._COMMAND_NAMES)} command names cached")


def request(data: bytes) -> None:
    _run(data, Side.DOWNSTREAM)


def response(data: bytes) -> None:
    _run(data, Side.UPSTREAM)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


REQUESTS = [
    _command(b"PING"),
    _command(b"SET", b"key", b"value"),
    _command(b"GET", b"key") * 3,
    _command(b"MSET", b"a", b"1", b"b", b"2"),
    _command(b"SUBSCRIBE", b"news"),
    _command(b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"),
    _command(b"HELLO", b"3"),
    _command(b"QUIT"),
    b"PING\r\nGET key\r\n",
    b"SET \"a b\" 'c\\x41'\r\n",
]


def _replies() -> list[bytes]:
    recorded: dict[str, Any] = json.loads((DATA_DIR / "redis_replies.json").read_text())
    out = [e["bytes"].encode("latin-1") for e in recorded["exchanges"]]
    return [r for r in out if r]


def request_seeds() -> list[bytes]:
    return [bytes([s, c]) + r for r in REQUESTS for s, c in ((0, 0), (1 | 8 | 0x30, 0), (6, 3))]


def response_seeds() -> list[bytes]:
    return [bytes([s, c]) + r for r in _replies() for s, c in ((0, 0), (0x31, 0), (6, 2))]

"""The Redis codec object: options, the decoder for each side, pass-through encode, -ERR replies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from metaprotocol.codecs.redis.commands import NOPROTO_DETAIL, QUIT_DETAIL
from metaprotocol.codecs.redis.reply import ReplyDecoder
from metaprotocol.codecs.redis.request import RequestDecoder
from metaprotocol.core.codec import Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    Mutation,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["DEFAULT_OPTIONS", "RedisCodec"]

DEFAULT_OPTIONS: Mapping[str, int] = {
    "max_array_length": 4 * 1024 * 1024,  # elements in one request or one reply aggregate
    "max_nesting_depth": 64,  # nested aggregates in a reply (redis itself nests < 10)
    "max_inline_size": 64 * 1024,  # an inline command line, as PROTO_INLINE_MAX_SIZE
}

_REASONS: Mapping[ErrorType, str] = {
    ErrorType.ROUTE_NOT_FOUND: "no route for command",
    ErrorType.CLUSTER_NOT_FOUND: "no cluster for command",
    ErrorType.NO_HEALTHY_UPSTREAM: "no healthy upstream",
    ErrorType.BAD_RESPONSE: "bad response from upstream",
    ErrorType.OVER_LIMIT: "rate limit exceeded",
    ErrorType.TIMEOUT: "upstream request timeout",
    ErrorType.UPSTREAM_RESET: "upstream connection reset",
    ErrorType.CONNECT_FAILURE: "upstream connect failure",
    ErrorType.MESSAGE_TOO_LARGE: "message too large",
    ErrorType.BAD_REQUEST: "bad request",
    ErrorType.UNSPECIFIED: "proxy error",
}
_NAMES_COMMAND: Final = frozenset({ErrorType.ROUTE_NOT_FOUND, ErrorType.CLUSTER_NOT_FOUND})
_MAX_ERROR_TEXT: Final = 512  # keep local replies short whatever the detail
_OK_REPLY: Final = b"+OK\r\n"


def _clean(text: str) -> str:
    """One line of text: CR, LF (and other control characters) become spaces."""
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)


def _validated(options: Mapping[str, Any]) -> Mapping[str, int]:
    if not options:
        return DEFAULT_OPTIONS  # shared: a codec per connection need not copy the defaults
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(
            f"redis codec_options: unknown option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}"
        )
    values = dict(DEFAULT_OPTIONS)
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"redis codec_options.{key}: expected a positive integer, got {value!r}"
            )
        values[key] = value
    return values


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class RedisCodec:
    """RESP on one side of one connection: requests downstream, replies upstream.

    Responses come back in request order (``Ordering.ORDERED``), there are no request ids
    and nothing on the wire depends on the routing properties, so ``encode`` forwards the
    original frame untouched (a mutation only changes what routes see), except an inline
    command, which goes upstream as the RESP array of its arguments.
    """

    name: ClassVar[str] = "redis"
    ordering: ClassVar[Ordering] = Ordering.ORDERED
    supports_mutation: ClassVar[bool] = False

    __slots__ = (
        "_replies",
        "_reply_decode",
        "_requests",
        "decode",
        "decode_many",
        "max_message_size",
        "options",
        "side",
        "variant",
    )

    # ``decode`` is the bound method of the side's decoder, stored on the instance: it
    # saves a call per message on the hot path (see the benchmark in the tests).
    decode: Callable[[bytearray], Message | NeedData]
    # The optional merging hook (see core/codec.py), bound the same way: downstream,
    # ``(buffer, limit, same_route)`` merges pipelined commands that take the same route;
    # upstream, ``(buffer, limit)`` merges the replies to a merged message.
    decode_many: Callable[..., Message | NeedData]

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        values = _validated(options)
        self.side = side
        # Downstream: which kind of upstream connection this client needs ("" or "resp3",
        # after HELLO 3); the core keeps separate pools per variant.
        self.variant = ""
        self.options: Mapping[str, int] = values
        self.max_message_size = max_message_size
        self._requests: RequestDecoder | None = None
        self._replies: ReplyDecoder | None = None
        if side is Side.DOWNSTREAM:
            self._requests = RequestDecoder(
                max_message_size, values["max_array_length"], values["max_inline_size"]
            )
            self.decode = self._requests.decode
            self.decode_many = self._requests.decode_many
        else:
            self._replies = ReplyDecoder(
                max_message_size, values["max_array_length"], values["max_nesting_depth"]
            )
            self.decode = self._reply_decode = self._replies.decode
            self.decode_many = self._replies_many

    def _replies_many(
        self, buffer: bytearray, limit: int, same_route: object = None
    ) -> Message | NeedData:
        if self.decode is not self._reply_decode or self._replies is None:
            return self.decode(buffer)  # the reply to the connection's HELLO 3 comes first
        return self._replies.decode_many(buffer, limit)

    def preamble(self, variant: str) -> bytes:
        """Upstream side: what a new connection of ``variant`` sends first (optional hook).

        The reply to it is consumed here and never reaches the core.
        """
        if variant != "resp3":
            raise ValueError(f"redis: unknown upstream variant {variant!r}")
        self.decode = self._skip_preamble_reply
        return _HELLO3

    def _skip_preamble_reply(self, buffer: bytearray) -> Message | NeedData:
        reply = self._reply_decode(buffer)
        if reply is NEED_DATA:
            return reply
        self.decode = self._reply_decode
        if isinstance(reply, Message) and reply.status is ResponseStatus.ERROR:
            raise ProtocolError(f"upstream refused HELLO 3: {reply.frame[:80]!r}")
        return self.decode(buffer)

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        if request_id is not None:
            raise ValueError("redis has no request ids: responses are matched in order")
        converted = message.codec_data
        if converted.__class__ is bytes:
            # An inline command goes on as the RESP array of its arguments (see request.py):
            # the upstream must run what the proxy read and routed, not re-split the line.
            return converted
        return message.frame  # properties are derived from the frame, never written back

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        """``-ERR <reason>\\r\\n``; the answer to QUIT (see commands.py) is ``+OK``."""
        if error is ErrorType.BAD_REQUEST and detail == QUIT_DETAIL:
            return _OK_REPLY
        if error is ErrorType.BAD_REQUEST and detail == NOPROTO_DETAIL:
            return b"-NOPROTO unsupported protocol version\r\n"
        if error is ErrorType.BAD_REQUEST and detail:
            text = detail
        else:
            text = _REASONS[error]
            if error in _NAMES_COMMAND and request is not None:
                command = request.properties.get("command")
                if command:
                    text = f"{text} {command}"
            if detail:
                text = f"{text}: {detail}"
        text = _clean(text)[:_MAX_ERROR_TEXT]
        return b"-ERR " + text.encode("utf-8", "replace") + b"\r\n"

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        """The proxy's answers to HELLO and CLIENT SETINFO (decoded as heartbeats); PING is
        forwarded like any command."""
        data = heartbeat.codec_data
        if isinstance(data, tuple) and data[0] == "ok":
            return _OK_REPLY
        if not (isinstance(data, tuple) and data[0] == "hello"):
            return None
        version = data[1]
        self.variant = "resp3" if version == 3 else ""
        return _hello_reply(version)


_HELLO3: Final = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


def _hello_reply(version: int) -> bytes:
    """What redis-server answers to HELLO, as the proxy: a map in RESP3, a flat array in
    RESP2 (https://redis.io/docs/latest/commands/hello/)."""
    fields = [
        (b"server", b"$5\r\nredis\r\n"),
        (b"version", b"$5\r\n7.0.0\r\n"),
        (b"proto", b":%d\r\n" % version),
        (b"id", b":0\r\n"),
        (b"mode", b"$10\r\nstandalone\r\n"),
        (b"role", b"$6\r\nmaster\r\n"),
        (b"modules", b"*0\r\n"),
    ]
    head = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))
    body = b"".join(b"$%d\r\n%s\r\n%s" % (len(k), k, v) for k, v in fields)
    return head + body

"""The Redis codec object: options, the decoder for each side, pass-through encode, -ERR replies."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from metaprotocol import __version__
from metaprotocol.codecs.redis.commands import AUTH_ARITY_DETAIL, NOPROTO_DETAIL, QUIT_DETAIL
from metaprotocol.codecs.redis.reply import ReplyDecoder
from metaprotocol.codecs.redis.request import RequestDecoder
from metaprotocol.codecs.redis.slots import hash_tag
from metaprotocol.codecs.redis.split import CROSSSLOT_DETAIL, CROSSSLOT_REPLY, split_request
from metaprotocol.core.codec import FanOut, Ordering, Side
from metaprotocol.core.config import HealthCheckRequest
from metaprotocol.core.message import (
    NEED_DATA,
    AuthenticationFailed,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    NeedData,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.core.secrets import Credentials

__all__ = ["DEFAULT_OPTIONS", "NOAUTH_REPLY", "WRONGPASS_REPLY", "RedisCodec"]

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
_PING: Final = b"*1\r\n$4\r\nPING\r\n"  # as redis-cli sends it
_PONG: Final = b"+PONG\r\n"  # RESP2 and RESP3 alike
_VARIANT_WORDS: Final = frozenset({"resp3", "readonly"})  # what an upstream variant may name

# What redis-server answers an unauthenticated client, and a refused login.
NOAUTH_REPLY: Final = b"-NOAUTH Authentication required.\r\n"
WRONGPASS_REPLY: Final = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
_WRONGPASS_DETAIL: Final = "invalid username-password pair or user is disabled"
_NOAUTH_DETAIL: Final = "authentication required"


def _clean(text: str) -> str:
    """One line of text: CR, LF (and other control characters) become spaces."""
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)


def _credentials(options: Mapping[str, Any]) -> Credentials | None:
    """``codec_options.auth``: the credentials clients must log in with (the config loader
    turns ``{username, password | password_file | password_env}`` into them)."""
    auth = options.get("auth")
    if auth is None or isinstance(auth, Credentials):
        return auth
    raise ValueError(
        "redis codec_options.auth: expected {username, password | password_file | "
        f"password_env}}, got {type(auth).__name__}"
    )


def _validated(options: Mapping[str, Any]) -> Mapping[str, int]:
    if not options or (len(options) == 1 and "auth" in options):
        return DEFAULT_OPTIONS  # shared: a codec per connection need not copy the defaults
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS) - {"auth"})
    if unknown:
        known = sorted([*DEFAULT_OPTIONS, "auth"])
        raise ValueError(f"redis codec_options: unknown option(s) {unknown}; known: {known}")
    values = dict(DEFAULT_OPTIONS)
    for key, value in options.items():
        if key == "auth":
            continue
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
        "_auth",
        "_authenticated",
        "_opening",
        "_replies",
        "_reply_decode",
        "_request_decode",
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
        # Downstream: the credentials clients log in with (None: no login needed).
        self._auth = _credentials(options) if side is Side.DOWNSTREAM else None
        self._authenticated = self._auth is None
        self._opening: list[str] = []  # upstream: opening commands still to be answered
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
                max_message_size,
                values["max_array_length"],
                values["max_inline_size"],
                self._auth is not None,
            )
            self.decode = self._request_decode = self._requests.decode
            self.decode_many = self._requests.decode_many
            if self._auth is not None:
                self.decode = self._decode_guarded
                self.decode_many = self._decode_many_guarded
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

    # -- downstream: clients log in to the proxy (codec_options.auth)

    def _decode_guarded(self, buffer: bytearray) -> Message | NeedData:
        """``decode`` while the listener asks for a login: AUTH (and HELLO ... AUTH) are
        checked here, in request order; anything else before a login gets ``-NOAUTH``."""
        try:
            message = self._request_decode(buffer)
        except ProtocolError as exc:
            if exc.fatal or self._authenticated or str(exc) == AUTH_ARITY_DETAIL:
                raise
            raise ProtocolError(_NOAUTH_DETAIL, ErrorType.UNAUTHENTICATED, fatal=False) from None
        if message is NEED_DATA:
            return message
        return self._admit(message)

    def _decode_many_guarded(
        self, buffer: bytearray, limit: int, same_route: Callable[..., bool]
    ) -> Message | NeedData:
        if not self._authenticated or self._requests is None:
            return self._decode_guarded(buffer)
        message = self._requests.decode_many(buffer, limit, same_route)
        if message is NEED_DATA or message.type is not MessageType.HEARTBEAT:
            return message
        return self._admit(message)

    def _admit(self, message: Message) -> Message:
        """Check a login (AUTH, HELLO with AUTH); let anything else through once logged in."""
        data = message.codec_data
        if message.type is MessageType.HEARTBEAT and (
            data[0] == "auth" or (data[0] == "hello" and len(data) == 4)
        ):
            auth = self._auth
            if auth is None or not auth.matches(data[-2], data[-1]):
                # A client already logged in stays logged in (as redis-server does).
                raise AuthenticationFailed(_WRONGPASS_DETAIL)
            self._authenticated = True
            return message
        if self._authenticated:
            return message
        raise ProtocolError(_NOAUTH_DETAIL, ErrorType.UNAUTHENTICATED, fatal=False)

    # -- upstream: what a new connection opens with

    def preamble(self, variant: str, credentials: Credentials | None = None) -> bytes:
        """Upstream side: what a new connection of ``variant`` sends first (optional hook).

        ``variant`` is ``""`` or words joined by ``+``: ``resp3`` opens with ``HELLO 3``
        (with ``AUTH <user> <password>`` when the cluster has ``auth``), otherwise ``auth``
        sends ``AUTH`` alone; ``readonly`` then sends ``READONLY`` (a Redis Cluster replica
        serves reads of its shard's slots only to connections that asked for it).

        The replies are consumed here and never reach the core; an error reply (a refused
        login) raises ``ProtocolError(CONNECT_FAILURE)``: a connect failure.
        """
        words = set(variant.split("+")) if variant else set()
        if words - _VARIANT_WORDS:
            raise ValueError(f"redis: unknown upstream variant {variant!r}")
        opening: list[tuple[str, list[bytes]]] = []
        if "resp3" in words:
            arguments = [b"HELLO", b"3"]
            if credentials is not None:
                arguments += [b"AUTH", credentials.user.encode(), _password(credentials)]
            opening.append(("HELLO 3", arguments))
        elif credentials is not None:
            arguments = [b"AUTH", _password(credentials)]
            if credentials.username is not None:
                arguments.insert(1, credentials.username.encode())
            opening.append(("AUTH", arguments))
        if "readonly" in words:
            opening.append(("READONLY", [b"READONLY"]))
        if not opening:
            raise ValueError(f"redis: nothing to send first on a {variant!r} connection")
        self._opening = [name for name, _ in opening]
        self.decode = self._skip_preamble_reply
        return b"".join(_command(arguments) for _, arguments in opening)

    def _skip_preamble_reply(self, buffer: bytearray) -> Message | NeedData:
        reply = self._reply_decode(buffer)
        if reply is NEED_DATA:
            return reply
        name = self._opening.pop(0)
        if not self._opening:
            self.decode = self._reply_decode
        if isinstance(reply, Message) and reply.status is ResponseStatus.ERROR:
            self.decode = self._reply_decode
            text = _clean(reply.frame[1:81].decode("utf-8", "replace")).strip()
            raise ProtocolError(f"upstream refused {name}: {text}", ErrorType.CONNECT_FAILURE)
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
        """``-ERR <reason>\\r\\n``; the answer to QUIT (see commands.py) is ``+OK``;
        ``UNAUTHENTICATED`` is ``-NOAUTH`` (``-WRONGPASS`` for a refused login),
        ``PERMISSION_DENIED`` is ``-NOPERM`` and a command that cannot be split across
        targets gets ``-CROSSSLOT`` (split.py), as redis-server answers them."""
        if error is ErrorType.UNAUTHENTICATED:
            return WRONGPASS_REPLY if detail == _WRONGPASS_DETAIL else NOAUTH_REPLY
        if error is ErrorType.PERMISSION_DENIED:
            text = _clean(detail or "no permissions to run this command")[:_MAX_ERROR_TEXT]
            return b"-NOPERM " + text.encode("utf-8", "replace") + b"\r\n"
        if error is ErrorType.BAD_REQUEST and detail == QUIT_DETAIL:
            return _OK_REPLY
        if error is ErrorType.BAD_REQUEST and detail == NOPROTO_DETAIL:
            return b"-NOPROTO unsupported protocol version\r\n"
        if error is ErrorType.BAD_REQUEST and detail == CROSSSLOT_DETAIL:
            return CROSSSLOT_REPLY
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

    def split(
        self, request: Message, target: Callable[[Mapping[str, str]], Hashable]
    ) -> FanOut | None:
        """Downstream side: split a multi-key command whose keys land on several targets
        (optional hook, see split.py and core/codec.py ``SplitsRequests``)."""
        return split_request(request, target, self.encode_error)

    @staticmethod
    def hash_input(name: str, value: str) -> str:
        """What consistent hashing sees of a property (optional hook): a ``key``'s hash
        tag (slots.py), so ``{user:1}:a`` and ``{user:1}:b`` land on one shard."""
        return hash_tag(value) if name == "key" else value

    def reply_status(self, reply: bytes) -> str:
        """``OK``, or the error prefix (``ERR``, ``WRONGTYPE``, ``MOVED``...) of a simple or
        blob error reply this side sent, for the access log."""
        first = reply[:1]
        if first == b"-":
            text = reply[1:]
        elif first == b"!":  # RESP3 blob error: !<length>\r\n<text>\r\n
            text = reply.partition(b"\r\n")[2]
        else:
            return "OK"
        prefix = text.split(b" ", 1)[0].split(b"\r", 1)[0]
        return prefix.decode("ascii", "replace")

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        """The proxy's answers to HELLO and CLIENT SETINFO (decoded as heartbeats); PING is
        forwarded like any command."""
        data = heartbeat.codec_data
        if isinstance(data, tuple) and (data[0] == "ok" or data[0] == "auth"):
            return _OK_REPLY  # an AUTH reaches the core only once accepted (see _admit)
        if not (isinstance(data, tuple) and data[0] == "hello"):
            return None
        version = data[1]
        self.variant = "resp3" if version == 3 else ""
        return _hello_reply(version)

    # -- active health checks (optional hook ProbesHealth)

    def probe_request(self, request: HealthCheckRequest) -> bytes:
        """Upstream side: ``PING``; ``request`` has nothing a Redis probe uses."""
        return _PING

    def probe_ok(self, response: Message) -> bool:
        """Healthy: the server answered ``+PONG`` (``-LOADING``, ``-NOAUTH``, ``-MASTERDOWN``
        and any other answer are not)."""
        return response.frame == _PONG


def _password(credentials: Credentials) -> bytes:
    return credentials.password.reveal().encode("utf-8", "surrogateescape")


def _command(arguments: list[bytes]) -> bytes:
    """A RESP multibulk request."""
    parts = [b"*%d\r\n" % len(arguments)]
    parts.extend(b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments)
    return b"".join(parts)


_SERVER: Final = b"metaprotocol"
_VERSION: Final = __version__.encode()


def _hello_reply(version: int) -> bytes:
    """What redis-server answers to HELLO, as the proxy: a map in RESP3, a flat array in
    RESP2 (https://redis.io/docs/latest/commands/hello/). ``server`` and ``version`` name
    the proxy itself (``metaprotocol`` and the package version), never a Redis version it
    would only be pretending to be."""
    fields = [
        (b"server", b"$%d\r\n%s\r\n" % (len(_SERVER), _SERVER)),
        (b"version", b"$%d\r\n%s\r\n" % (len(_VERSION), _VERSION)),
        (b"proto", b":%d\r\n" % version),
        (b"id", b":0\r\n"),
        (b"mode", b"$10\r\nstandalone\r\n"),
        (b"role", b"$6\r\nmaster\r\n"),
        (b"modules", b"*0\r\n"),
    ]
    head = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))
    body = b"".join(b"$%d\r\n%s\r\n%s" % (len(k), k, v) for k, v in fields)
    return head + body

"""The Message a codec decodes and the error types a codec can reply with (docs/architecture.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "NEED_DATA",
    "AuthenticationFailed",
    "ErrorType",
    "Message",
    "MessageType",
    "Mutation",
    "NeedData",
    "ProtocolError",
    "ResponseStatus",
]


class MessageType(enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"
    ONEWAY = "oneway"
    STREAM_INIT = "stream_init"
    STREAM_DATA = "stream_data"
    STREAM_CLOSE = "stream_close"
    HEARTBEAT = "heartbeat"
    ERROR = "error"


class ResponseStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"


class ErrorType(enum.Enum):
    """Why the proxy answers a request itself. Codecs map each to a wire status."""

    ROUTE_NOT_FOUND = "route_not_found"
    CLUSTER_NOT_FOUND = "cluster_not_found"
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
    BAD_RESPONSE = "bad_response"
    OVER_LIMIT = "over_limit"
    TIMEOUT = "timeout"
    UPSTREAM_RESET = "upstream_reset"
    CONNECT_FAILURE = "connect_failure"
    MESSAGE_TOO_LARGE = "message_too_large"
    BAD_REQUEST = "bad_request"
    UNSPECIFIED = "unspecified"
    UNAUTHENTICATED = "unauthenticated"  # the client has not (or not correctly) authenticated
    PERMISSION_DENIED = "permission_denied"  # authenticated, but not allowed to do this


class NeedData(enum.Enum):
    """Sentinel returned by ``Codec.decode`` when the buffer holds no complete message."""

    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid message of the protocol.

    ``error_type`` is the hint for the error reply (e.g. MESSAGE_TOO_LARGE);
    ``fatal`` says whether the connection's byte stream can no longer be framed
    (so the proxy must close it after replying). ``request`` is what was decoded before
    the error, when the codec got that far (a header: the request id, the message type,
    the frame so far): the core passes it to ``encode_error`` so the error reply carries
    the request's id and the client can match it. None: nothing usable was read.
    """

    def __init__(
        self,
        message: str,
        error_type: ErrorType = ErrorType.BAD_REQUEST,
        *,
        fatal: bool = True,
        request: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.fatal = fatal
        self.request = request

    @property
    def request_id(self) -> int | None:
        """The id of the request that failed, if the codec read it."""
        return None if self.request is None else self.request.request_id

    @property
    def message_type(self) -> MessageType | None:
        """The type of the message that failed, if the codec read it."""
        return None if self.request is None else self.request.type


class AuthenticationFailed(ProtocolError):
    """A client's credentials were refused (a wrong password, say): answered like any
    non-fatal ``ProtocolError`` (with ``UNAUTHENTICATED``), and counted by the core as a
    failed attempt (``downstream_auth_failed``). The message never holds the credentials."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorType.UNAUTHENTICATED, fatal=False)


@dataclass(frozen=True, slots=True)
class Mutation:
    """Properties to add (or overwrite) and remove when a codec re-encodes a message."""

    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


class Message:
    """One decoded message: routing metadata plus the original frame bytes.

    ``properties`` keys are lower-case strings (docs/configuration.md lists
    each codec's). ``frame`` is the message exactly as it arrived, so an
    unmutated message is forwarded without re-encoding. ``codec_data`` is
    private to the codec that produced the message (offsets for rewriting ids
    or re-serialising attachments); the core never looks inside it.

    ``count`` is how many requests (or responses) of the wire this message stands for:
    more than one only from a codec's optional ``decode_many`` hook, which merges a
    pipelined run of them into one frame (see core/codec.py).

    A plain class rather than a dataclass: one is built per message on each side, and the
    ``__init__`` a dataclass generates stays interpreted code even in the mypyc build.
    Messages compare by identity.
    """

    __slots__ = (
        "body_size",
        "codec_data",
        "count",
        "frame",
        "header_size",
        "properties",
        "request_id",
        "status",
        "stream_id",
        "type",
    )

    def __init__(
        self,
        type: MessageType,
        frame: bytes,
        request_id: int | None = None,
        properties: dict[str, str] | None = None,
        status: ResponseStatus = ResponseStatus.OK,
        stream_id: int | None = None,
        header_size: int = 0,
        body_size: int = 0,
        codec_data: Any = None,
        count: int = 1,
    ) -> None:
        self.type = type
        self.frame = frame
        self.request_id = request_id
        self.properties: dict[str, str] = {} if properties is None else properties
        self.status = status
        self.stream_id = stream_id
        self.header_size = header_size
        self.body_size = body_size
        self.codec_data = codec_data
        self.count = count

    def __repr__(self) -> str:
        return (
            f"Message(type={self.type!r}, frame={self.frame!r}, request_id={self.request_id!r}, "
            f"properties={self.properties!r}, status={self.status!r}, "
            f"stream_id={self.stream_id!r}, header_size={self.header_size!r}, "
            f"body_size={self.body_size!r}, codec_data={self.codec_data!r}, "
            f"count={self.count!r})"
        )

    @property
    def is_request(self) -> bool:
        return self.type in _REQUEST_TYPES

    @property
    def expects_response(self) -> bool:
        return self.type is MessageType.REQUEST or self.type is MessageType.STREAM_INIT


_REQUEST_TYPES: Final = frozenset(
    {
        MessageType.REQUEST,
        MessageType.ONEWAY,
        MessageType.STREAM_INIT,
        MessageType.STREAM_DATA,
        MessageType.STREAM_CLOSE,
    }
)

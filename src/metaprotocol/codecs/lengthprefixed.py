"""The tutorial codec: length-prefixed frames with a request id, key=value headers and a body.

Read this module to learn how to write a codec. The wire format is:

    frame   := length:u32 kind:u8 status:u8 request_id:u32 header_len:u16 headers body
    headers := ("key=value\\n")*            (header_len bytes, UTF-8)
    length  := number of bytes after the length field itself (big-endian, like every field)

    kind: 1 request, 2 response, 3 oneway, 4 ping, 5 pong,
          6 stream init, 7 stream data, 8 stream close
    status: 0 ok; on responses anything else is an error (the ErrorType's index + 1 for
            replies the proxy builds, with an ``error=<type>`` header and the detail as body)

The steps every codec takes:
1. ``decode`` looks at the fixed header without consuming anything; if the frame is not
   complete it returns ``NEED_DATA`` (so any prefix of a valid stream is never an error);
   if the header is impossible it raises ``ProtocolError`` (fatal: the stream is lost).
2. It copies the frame out once (``bytes(buffer[:n])``), deletes it from the buffer, and
   returns a ``Message`` whose ``frame`` is that copy and whose ``properties`` are what
   routes match on.
3. ``encode`` returns ``message.frame`` untouched unless the id or properties change.
4. ``encode_error`` and ``encode_heartbeat_reply`` build replies from scratch.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from metaprotocol.core.codec import Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["KIND", "LengthPrefixedCodec", "build_frame"]

_HEADER: Final = struct.Struct(">IBBIH")  # length, kind, status, request_id, header_len
_FIXED: Final = _HEADER.size  # 12
_ID: Final = struct.Struct(">I")

KIND: dict[int, MessageType] = {
    1: MessageType.REQUEST,
    2: MessageType.RESPONSE,
    3: MessageType.ONEWAY,
    4: MessageType.HEARTBEAT,
    5: MessageType.HEARTBEAT,
    6: MessageType.STREAM_INIT,
    7: MessageType.STREAM_DATA,
    8: MessageType.STREAM_CLOSE,
}
_KIND_OF: dict[MessageType, int] = {
    MessageType.REQUEST: 1,
    MessageType.RESPONSE: 2,
    MessageType.ONEWAY: 3,
    MessageType.STREAM_INIT: 6,
    MessageType.STREAM_DATA: 7,
    MessageType.STREAM_CLOSE: 8,
}
_ERROR_STATUS: Final = {err: index + 1 for index, err in enumerate(ErrorType)}
_OK: Final = ResponseStatus.OK
_ERROR: Final = ResponseStatus.ERROR


def build_frame(
    kind: int,
    request_id: int,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    status: int = 0,
) -> bytes:
    """Serialise one frame (used by tests, the demo and ``encode``)."""
    head = "".join(f"{k}={v}\n" for k, v in (headers or {}).items()).encode()
    length = _FIXED - 4 + len(head) + len(body)
    return _HEADER.pack(length, kind, status, request_id, len(head)) + head + body


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class LengthPrefixedCodec:
    """One side of one connection speaking the tutorial protocol."""

    name: ClassVar[str] = "lengthprefixed"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = True

    __slots__ = ("max_message_size", "side")

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        if options:
            raise ValueError(f"lengthprefixed takes no codec_options, got {sorted(options)}")
        self.side = side
        self.max_message_size = max_message_size

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) < _FIXED:
            return NEED_DATA
        length, kind, status, request_id, header_len = _HEADER.unpack_from(buffer)
        total = length + 4
        if total > self.max_message_size:
            raise ProtocolError(f"frame of {total} bytes is too large", ErrorType.MESSAGE_TOO_LARGE)
        if total < _FIXED + header_len:
            raise ProtocolError(f"bad frame: length {length} < headers {header_len}")
        mtype = KIND.get(kind)
        if mtype is None:
            raise ProtocolError(f"bad frame: unknown kind {kind}")
        if len(buffer) < total:
            return NEED_DATA
        frame = bytes(buffer[:total])
        del buffer[:total]
        properties: dict[str, str] = {}
        if header_len:
            try:
                text = frame[_FIXED : _FIXED + header_len].decode()
            except UnicodeDecodeError:
                raise ProtocolError("bad frame: headers are not UTF-8", fatal=False) from None
            for line in text.split("\n"):
                if line:
                    key, sep, value = line.partition("=")
                    if not sep:
                        raise ProtocolError(f"bad header line {line!r}", fatal=False)
                    properties[key.lower()] = value
        # Positional arguments, in Message's field order (cheaper than keywords per frame):
        # type, frame, request_id, properties, status, stream_id, header_size, body_size,
        # codec_data (the kind byte, so a pong can be told from a ping).
        return Message(
            mtype,
            frame,
            request_id,
            properties,
            _OK if status == 0 else _ERROR,
            request_id if kind >= 6 else None,
            _FIXED + header_len,
            total - _FIXED - header_len,
            kind,
        )

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        frame = message.frame
        if mutation:
            properties = dict(message.properties)
            for key in mutation.remove:
                properties.pop(key, None)
            for key, value in mutation.add:
                properties[key] = value
            kind = frame[4]
            status = frame[5]
            rid = request_id if request_id is not None else (message.request_id or 0)
            return build_frame(kind, rid, properties, frame[message.header_size :], status)
        if request_id is None:
            return frame  # zero-copy pass-through
        return frame[:6] + _ID.pack(request_id) + frame[10:]

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        rid = request.request_id or 0 if request is not None else 0
        return build_frame(2, rid, {"error": error.value}, detail.encode(), _ERROR_STATUS[error])

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        if heartbeat.codec_data != 4:
            return None  # a pong needs no answer
        return build_frame(5, heartbeat.request_id or 0)

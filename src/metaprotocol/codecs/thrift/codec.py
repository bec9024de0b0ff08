"""ThriftCodec: framed, unframed and THeader transports over the binary and compact protocols.

Listener ``codec_options``: ``transport: framed|unframed|header|auto`` (``buffered`` is an
alias of ``unframed``) and ``protocol: binary|compact|auto``, both ``auto`` by default. On the
downstream side auto-detection locks onto what the first message uses (a Thrift connection
never switches); on the upstream side each response is detected on its own, so requests
forwarded untouched from clients that frame differently still get their replies decoded.

Message types: CALL -> REQUEST, ONEWAY -> ONEWAY, REPLY -> RESPONSE (status ERROR when the
result struct carries a declared exception instead of field 0), EXCEPTION -> RESPONSE with
status ERROR. The seqid is the request id; properties are ``method``, ``service`` (for a
multiplexed ``Service:method`` name) and ``message_type``, plus THeader info headers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
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

from .binary import (
    BinaryStructScanner,
    read_binary_header,
    reply_is_declared_exception_binary,
    write_binary_exception,
)
from .compact import (
    CompactStructScanner,
    encode_varint,
    read_compact_header,
    reply_is_declared_exception_compact,
    write_compact_exception,
)
from .status import reply_status_of
from .transport import (
    HeaderInfo,
    Transport,
    WireProtocol,
    build_header_frame,
    detect_protocol,
    detect_transport,
    new_header_frame,
    parse_header_frame,
)

__all__ = ["ThriftCodec", "ThriftFrameInfo"]

# TApplicationException type codes (lib/py/src/Thrift.py).
UNKNOWN: Final = 0
UNKNOWN_METHOD: Final = 1
INTERNAL_ERROR: Final = 6
PROTOCOL_ERROR: Final = 7
_APP_EXCEPTION_TYPE: Final = {
    ErrorType.ROUTE_NOT_FOUND: UNKNOWN_METHOD,
    ErrorType.BAD_REQUEST: PROTOCOL_ERROR,
    ErrorType.MESSAGE_TOO_LARGE: PROTOCOL_ERROR,
    # No TApplicationException type means "not allowed": UNKNOWN, the message says which.
    ErrorType.UNAUTHENTICATED: UNKNOWN,
    ErrorType.PERMISSION_DENIED: UNKNOWN,
}

_TRANSPORTS: Final = {
    "auto": None,
    "framed": Transport.FRAMED,
    "unframed": Transport.UNFRAMED,
    "buffered": Transport.UNFRAMED,
    "header": Transport.HEADER,
}
_PROTOCOLS: Final = {"auto": None, "binary": WireProtocol.BINARY, "compact": WireProtocol.COMPACT}

# Thrift message type -> (MessageType, message_type property, status before the reply check)
_MESSAGE_TYPES: Final = {
    1: (MessageType.REQUEST, "call", ResponseStatus.OK),
    2: (MessageType.RESPONSE, "reply", ResponseStatus.OK),
    3: (MessageType.RESPONSE, "exception", ResponseStatus.ERROR),
    4: (MessageType.ONEWAY, "oneway", ResponseStatus.OK),
}
_REPLY: Final = 2

_I32: Final = struct.Struct("!i")
_FRAMED_STRICT_UNPACK: Final = struct.Struct(
    "!iIi"
).unpack_from  # frame length, version, name length
_I32_UNPACK: Final = _I32.unpack_from
_NAME_CACHE_SIZE: Final = 256
# Frame copiers by frame size: one struct unpack copies a bytearray prefix to bytes in one
# allocation (bytes(buffer[:n]) makes two). Shared by all codecs; bounded in count and size.
_COPIERS: dict[int, Callable[[bytearray], tuple[bytes]]] = {}
_COPIER_MAX_SIZE: Final = 4096
_BINARY: Final = WireProtocol.BINARY
_COMPACT: Final = WireProtocol.COMPACT
_FRAMED: Final = Transport.FRAMED
_UNFRAMED: Final = Transport.UNFRAMED
_HEADER: Final = Transport.HEADER

# Message.codec_data: (transport, protocol, seqid offset, seqid length, header info, name).
# The seqid offset is into the frame, or into the (untransformed) payload for THeader.
ThriftFrameInfo = tuple[Transport, WireProtocol, int, int, HeaderInfo | None, bytes]


def properties_for(name: str, message_type: str) -> dict[str, str]:
    """Routing properties for a message name (``Service:method`` when multiplexed)."""
    service, colon, method = name.partition(":")
    if colon:
        return {"method": method, "service": service, "message_type": message_type}
    return {"method": name, "message_type": message_type}


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class ThriftCodec:
    """One side of one Thrift connection (see the module docstring for the options)."""

    name: ClassVar[str] = "thrift"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = False

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        unknown = set(options) - {"transport", "protocol"}
        if unknown:
            raise ValueError(f"thrift codec_options: unknown option(s) {sorted(unknown)}")
        transport = options.get("transport", "auto")
        protocol = options.get("protocol", "auto")
        if transport not in _TRANSPORTS:
            raise ValueError(
                f"thrift codec_options.transport: expected framed|unframed|header|auto, "
                f"got {transport!r}"
            )
        if protocol not in _PROTOCOLS:
            raise ValueError(
                f"thrift codec_options.protocol: expected binary|compact|auto, got {protocol!r}"
            )
        if max_message_size <= 0:
            raise ValueError("thrift: max_message_size must be positive")
        self._max = max_message_size
        self._transport: Transport | None = _TRANSPORTS[transport]
        self._protocol: WireProtocol | None = _PROTOCOLS[protocol]
        # Downstream auto-detection locks after the first message; upstream does not.
        self._lock = side is Side.DOWNSTREAM
        self._last: tuple[Transport, WireProtocol] | None = None
        # An unframed message being scanned: its scanner, protocol and parsed header.
        self._scanner: BinaryStructScanner | CompactStructScanner | None = None
        self._scan_header: tuple[WireProtocol, bytes, int, int, int, int, int] | None = None
        # (type byte + name length + name) -> (type, status, properties, codec_data)
        self._names: dict[bytes, tuple[MessageType, ResponseStatus, dict[str, str], Any]] = {}
        self._fast = False
        self._update_fast()

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | NeedData:
        # Fast path: framed strict binary in one pass. The frame length delimits the message,
        # so the struct is not parsed (a reply's first field header is peeked to tell success
        # from a declared exception). Anything unusual falls through to the general path.
        if self._fast and len(buffer) >= 17:
            size, word, name_len = _FRAMED_STRICT_UNPACK(buffer)
            end = size + 4
            seqid_at = 12 + name_len
            if (
                len(buffer) >= end
                and word & 0xFFFF0000 == 0x80010000
                and name_len >= 0
                and seqid_at + 5 <= end <= self._max
                and self._scanner is None
            ):
                copy = _COPIERS.get(end)
                frame = bytes(buffer[:end]) if copy is None else copy(buffer)[0]
                del buffer[:end]
                entry = self._names.get(frame[7:seqid_at])
                if entry is None:
                    if copy is None and end <= _COPIER_MAX_SIZE and len(_COPIERS) < 4096:
                        _COPIERS[end] = struct.Struct(f"{end}s").unpack_from
                    return self._decode_framed_frame(frame)
                mtype, status, properties, info = entry
                body_at = seqid_at + 4
                if word & 0xFF == _REPLY and frame[body_at]:
                    if body_at + 3 > end:
                        raise ProtocolError("thrift: truncated reply field header", fatal=False)
                    if frame[body_at + 1] or frame[body_at + 2]:
                        status = ResponseStatus.ERROR  # a declared exception, not field 0
                return Message(
                    mtype,
                    frame,
                    _I32_UNPACK(frame, seqid_at)[0],
                    properties.copy(),
                    status,
                    None,
                    body_at,
                    end - body_at,
                    info,
                )
        transport = self._transport
        if transport is None:
            if self._scanner is not None:
                transport = _UNFRAMED
            else:
                transport = detect_transport(buffer)
                if transport is None:
                    return NEED_DATA
        if transport is _FRAMED:
            return self._decode_framed(buffer)
        if transport is _UNFRAMED:
            try:
                return self._decode_unframed(buffer)
            except ProtocolError:
                self._scanner = self._scan_header = None
                raise
        return self._decode_header(buffer)

    def _frame_length(self, buffer: bytearray) -> int:
        """The whole frame's length (with its 4-byte prefix), or 0 if it is not all here."""
        if len(buffer) < 4:
            return 0
        (size,) = _I32.unpack_from(buffer, 0)
        if size > self._max:
            raise ProtocolError(
                f"thrift: frame of {size} bytes exceeds max_message_size {self._max}",
                ErrorType.MESSAGE_TOO_LARGE,
            )
        if size < 0:
            raise ProtocolError(f"thrift: negative frame length {size}")
        return size + 4 if len(buffer) >= size + 4 else 0

    def _decode_framed(self, buffer: bytearray) -> Message | NeedData:
        end = self._frame_length(buffer)
        if not end:
            self._check_incomplete_frame(buffer)
            return NEED_DATA
        frame = bytes(buffer[:end])
        del buffer[:end]
        return self._decode_framed_frame(frame)

    def _check_incomplete_frame(self, buffer: bytearray) -> None:
        """Refuse a frame, before the rest of it arrives, whose message header declares a
        name the frame cannot hold: no number of further bytes would make it valid."""
        if len(buffer) < 6:
            return
        frame_end = 4 + _I32_UNPACK(buffer, 0)[0]
        try:
            protocol = self._protocol or detect_protocol(buffer, 4)
            if protocol is _BINARY:
                read_binary_header(buffer, 4, len(buffer), frame_end)
            else:
                read_compact_header(buffer, 4, len(buffer), frame_end)
        except ProtocolError as exc:
            if exc.error_type is ErrorType.MESSAGE_TOO_LARGE:
                raise
            # Anything else is answered, non-fatally, once the whole frame is in.

    def _decode_framed_frame(self, frame: bytes) -> Message:
        """A whole frame, already consumed: errors in it are non-fatal."""
        try:
            return self._decode_payload(frame, 4, _FRAMED, self._protocol, None)
        except ProtocolError as exc:
            raise ProtocolError(
                str(exc), exc.error_type, fatal=False, request=exc.request
            ) from None

    def _decode_payload(
        self,
        frame: bytes,
        start: int,
        transport: Transport,
        protocol: WireProtocol | None,
        header: HeaderInfo | None,
    ) -> Message:
        """A message whose bytes are all in ``frame[start:]`` (framed or THeader payload)."""
        end = len(frame)
        if protocol is None:
            protocol = detect_protocol(frame, start)
            if protocol is None:
                raise ProtocolError("thrift: empty frame")
        if protocol is _BINARY:
            binary = read_binary_header(frame, start, end)
            if binary is None:
                raise ProtocolError("thrift: truncated message header")
            name, mtype, seqid, seqid_at, body_at = binary
            seqid_len = 4
        else:
            compact = read_compact_header(frame, start, end)
            if compact is None:
                raise ProtocolError("thrift: truncated message header")
            name, mtype, seqid, seqid_at, seqid_len, body_at = compact
        self._remember(transport, protocol)
        info: ThriftFrameInfo = (transport, protocol, seqid_at, seqid_len, header, name)
        return self._message(
            frame if header is None else header.payload,
            name,
            _MESSAGE_TYPES[mtype],
            seqid,
            body_at,
            info,
            frame,
        )

    def _decode_unframed(self, buffer: bytearray) -> Message | NeedData:
        scanner = self._scanner
        if scanner is None:
            protocol = self._protocol or detect_protocol(buffer, 0)
            if protocol is None:
                return NEED_DATA
            n = len(buffer)
            if protocol is _BINARY:
                binary = read_binary_header(buffer, 0, n, self._max)
                if binary is None:
                    return self._need_more(buffer)
                name, mtype, seqid, seqid_at, body_at = binary
                seqid_len = 4
                scanner = BinaryStructScanner(body_at, self._max)
            else:
                compact = read_compact_header(buffer, 0, n, self._max)
                if compact is None:
                    return self._need_more(buffer)
                name, mtype, seqid, seqid_at, seqid_len, body_at = compact
                scanner = CompactStructScanner(body_at, self._max)
            self._scanner = scanner
            self._scan_header = (protocol, name, mtype, seqid, seqid_at, seqid_len, body_at)
        if not scanner.advance(buffer):
            return self._need_more(buffer)
        assert self._scan_header is not None
        protocol, name, mtype, seqid, seqid_at, seqid_len, body_at = self._scan_header
        self._scanner = self._scan_header = None
        end = scanner.pos
        frame = bytes(buffer[:end])
        del buffer[:end]
        self._remember(_UNFRAMED, protocol)
        info: ThriftFrameInfo = (_UNFRAMED, protocol, seqid_at, seqid_len, None, name)
        return self._message(frame, name, _MESSAGE_TYPES[mtype], seqid, body_at, info, frame)

    def _need_more(self, buffer: bytearray) -> NeedData:
        if len(buffer) > self._max:
            raise ProtocolError(
                f"thrift: unframed message exceeds max_message_size {self._max}",
                ErrorType.MESSAGE_TOO_LARGE,
            )
        return NEED_DATA

    def _decode_header(self, buffer: bytearray) -> Message | NeedData:
        end = self._frame_length(buffer)
        if not end:
            return NEED_DATA
        frame = bytes(buffer[:end])
        del buffer[:end]
        try:
            header = parse_header_frame(frame, self._max)
            if self._protocol is not None and header.protocol is not self._protocol:
                raise ProtocolError(f"thrift header: payload is {header.protocol.value}")
            message = self._decode_payload(header.payload, 0, _HEADER, header.protocol, header)
        except ProtocolError as exc:
            raise ProtocolError(
                str(exc), exc.error_type, fatal=False, request=exc.request
            ) from None
        message.frame = frame
        message.header_size = max(0, len(frame) - message.body_size)
        if header.info:
            merged = {key.lower(): value for key, value in header.info.items()}
            merged.update(message.properties)  # the pinned keys win
            message.properties = merged
        return message

    def _remember(self, transport: Transport, protocol: WireProtocol) -> None:
        self._last = (transport, protocol)
        if self._lock:
            if self._transport is None:
                self._transport = transport
            if self._protocol is None:
                self._protocol = protocol
            self._update_fast()

    def _update_fast(self) -> None:
        # The fast path may only skip detection where detection would not lock anything.
        transport_ok = self._transport is _FRAMED or (self._transport is None and not self._lock)
        protocol_ok = self._protocol is _BINARY or (self._protocol is None and not self._lock)
        self._fast = transport_ok and protocol_ok

    def _message(
        self,
        payload: bytes,
        name_bytes: bytes,
        kind: tuple[MessageType, str, ResponseStatus],
        seqid: int,
        body_at: int,
        info: ThriftFrameInfo,
        frame: bytes,
    ) -> Message:
        mtype, type_name, status = kind
        try:
            name = name_bytes.decode()
        except UnicodeDecodeError:
            # The header is read: the error reply answers this seqid (name left empty).
            decoded = Message(mtype, frame, seqid, codec_data=(*info[:5], b""))
            raise ProtocolError("thrift: method name is not UTF-8", request=decoded) from None
        if info[0] is _FRAMED and info[1] is _BINARY and frame[4] == 0x80:
            self._cache_name(frame, info, kind, properties_for(name, type_name))
        if type_name == "reply":
            check = (
                reply_is_declared_exception_binary
                if info[1] is _BINARY
                else reply_is_declared_exception_compact
            )
            if check(payload, body_at, len(payload)):
                status = ResponseStatus.ERROR
        properties = properties_for(name, type_name)
        return Message(
            mtype, frame, seqid, properties, status, None, body_at, len(payload) - body_at, info
        )

    def _cache_name(
        self,
        frame: bytes,
        info: ThriftFrameInfo,
        kind: tuple[MessageType, str, ResponseStatus],
        properties: dict[str, str],
    ) -> None:
        """Remember a framed strict binary message's (type, name) for the fast path."""
        if len(self._names) >= _NAME_CACHE_SIZE:
            self._names.clear()  # bounded: a peer cycling through names costs only speed
        self._names[frame[7 : info[2]]] = (kind[0], kind[2], properties, info)

    # -- encoding ---------------------------------------------------------------------------

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        """The frame, with its seqid (and THeader seqid) set to ``request_id`` if given.

        ``mutation`` is ignored: this codec does not rewrite properties
        (``supports_mutation`` is False). Seqids are 32-bit: ``request_id`` must lie in
        [-2**31, 2**32) and is written modulo 2**32.
        """
        if request_id is None or request_id == message.request_id:
            return message.frame
        if not -0x80000000 <= request_id <= 0xFFFFFFFF:
            raise ValueError(f"thrift seqid out of 32-bit range: {request_id}")
        info = message.codec_data
        if not isinstance(info, tuple):
            info = self._describe(message.frame)
        transport, protocol, seqid_at, seqid_len, header, _ = info
        if protocol is _BINARY:
            seqid = (request_id & 0xFFFFFFFF).to_bytes(4, "big")
        else:
            seqid = encode_varint(request_id & 0xFFFFFFFF)
        if header is not None:
            payload = header.payload
            payload = payload[:seqid_at] + seqid + payload[seqid_at + seqid_len :]
            return build_header_frame(header.header_bytes, request_id, header.transforms, payload)
        frame = message.frame
        out = frame[:seqid_at] + seqid + frame[seqid_at + seqid_len :]
        if transport is _FRAMED and len(seqid) != seqid_len:
            out = _I32.pack(len(out) - 4) + out[4:]
        return out

    def _describe(self, frame: bytes) -> ThriftFrameInfo:
        """codec_data for a Message built outside this codec (decode its frame afresh)."""
        options = {"transport": self._transport.value if self._transport else "auto"}
        decoded = ThriftCodec(Side.UPSTREAM, options, max(self._max, len(frame))).decode(
            bytearray(frame)
        )
        if isinstance(decoded, NeedData):
            raise ValueError("thrift: message frame is not one complete Thrift message")
        info: ThriftFrameInfo = decoded.codec_data
        return info

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        """A TApplicationException reply in the request's transport and protocol."""
        exc_type = _APP_EXCEPTION_TYPE.get(error, INTERNAL_ERROR)
        info = request.codec_data if request is not None else None
        if request is not None and isinstance(info, tuple):
            transport, protocol, _, _, _, name = info
            seqid = request.request_id or 0
        else:
            transport, protocol = self._last or (
                self._transport or _FRAMED,
                self._protocol or _BINARY,
            )
            name, seqid = b"", 0
        if protocol is _BINARY:
            payload = write_binary_exception(name, seqid, exc_type, detail)
        else:
            payload = write_compact_exception(name, seqid, exc_type, detail)
        if transport is _FRAMED:
            return _I32.pack(len(payload)) + payload
        if transport is _HEADER:
            return new_header_frame(protocol, seqid, payload)
        return payload

    def reply_status(self, reply: bytes) -> str:
        """The access log's status of a reply this side sent (see thrift/status.py)."""
        reader = ThriftCodec(Side.UPSTREAM, {}, max(self._max, len(reply)))
        try:
            message = reader.decode(bytearray(reply))
        except ProtocolError:
            return ""
        if not isinstance(message, Message):
            return ""
        info: ThriftFrameInfo = message.codec_data
        payload = message.frame if info[4] is None else info[4].payload
        return reply_status_of(message, payload, info[1])

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        """Thrift has no heartbeats."""
        return None

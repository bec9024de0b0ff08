"""The tRPC codec: unary, oneway and streaming frames of tRPC over TCP (docs/trpc.md).

How frames map onto the core's message types (the side says which way a frame travels):

    frame                    client side (DOWNSTREAM)      server side (UPSTREAM)
    unary, call_type 0       REQUEST                       RESPONSE (ERROR status if ret or
    unary, call_type 1       ONEWAY                                  func_ret is not 0)
    stream INIT              STREAM_INIT (routed)          STREAM_DATA; ERROR if ret != 0
    stream DATA, FEEDBACK    STREAM_DATA                   STREAM_DATA
    stream CLOSE             STREAM_CLOSE (ERROR status    STREAM_CLOSE; ERROR if a reset or
                             if a reset)                   ret != 0

A stream frame's ``request_id`` is its stream id, so DATA, FEEDBACK and CLOSE follow the INIT
to the same upstream connection and stream ids are rewritten like request ids. A message that
ends a stream from the server (STREAM_CLOSE or ERROR) frees it in the proxy; so does a reset
from the client. Routing properties: ``caller``, ``callee``, ``func`` and every ``trans_info``
key (lower-cased; the three named fields win over trans_info keys of the same name).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from metaprotocol.codecs.protobuf import (
    Field,
    WireType,
    as_int32,
    encode_len_field,
    encode_varint_field,
    read_fields,
    read_map_entry,
    rewrite_varint,
    splice,
)
from metaprotocol.codecs.trpc.frame import (
    CLOSE_RESET,
    FIXED_HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PB_HEADER,
    RET_CODES,
    CloseMeta,
    FrameType,
    InitMeta,
    InitRequestMeta,
    InitResponseMeta,
    RequestField,
    ResponseField,
    StreamFrame,
    build_close,
    build_response,
)
from metaprotocol.codecs.trpc.scan import scan_header
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

__all__ = ["TrpcCodec"]

_SIZES: Final = struct.Struct(">IH")  # total size, pb header size (bytes 4..10)
_STREAM_ID: Final = struct.Struct(">I")  # bytes 10..14
_OK: Final = ResponseStatus.OK
_ERROR: Final = ResponseStatus.ERROR
_U32: Final = 0xFFFF_FFFF
# Field numbers compared per field while decoding, as plain ints (see frame.py's enums).
_REQUEST_ID: Final = 3  # RequestField.REQUEST_ID and ResponseField.REQUEST_ID
_CALL_TYPE: Final = 2  # RequestField.CALL_TYPE
_REQUEST_TRANS: Final = 9  # RequestField.TRANS_INFO
_RESPONSE_TRANS: Final = 8  # ResponseField.TRANS_INFO
_RET: Final = 4  # ResponseField.RET
_FUNC_RET: Final = 5  # ResponseField.FUNC_RET

# Where the routing names live in each header, by property name.
_REQUEST_NAMES: Final = {
    "caller": int(RequestField.CALLER),
    "callee": int(RequestField.CALLEE),
    "func": int(RequestField.FUNC),
}
_INIT_NAMES: Final = {
    "caller": int(InitRequestMeta.CALLER),
    "callee": int(InitRequestMeta.CALLEE),
    "func": int(InitRequestMeta.FUNC),
}
_NO_NAMES: Final[dict[str, int]] = {}
# The same, by field number, for decoding.
_REQUEST_FIELDS: Final = {number: name for name, number in _REQUEST_NAMES.items()}
_INIT_FIELDS: Final = {number: name for name, number in _INIT_NAMES.items()}
_NO_FIELDS: Final[dict[int, str]] = {}


def _pb_header_size(frame: bytes) -> int:
    return (frame[8] << 8) | frame[9]


def _with_sizes(frame: bytes, pb_header_size: int) -> bytes:
    """``frame`` with its total and pb header sizes set for its current length."""
    if pb_header_size > MAX_PB_HEADER:
        raise ProtocolError("tRPC: the pb header would exceed 64 KiB", fatal=False)
    return frame[:4] + _SIZES.pack(len(frame), pb_header_size) + frame[10:]


def _mutated_fields(
    pb: bytes, names: Mapping[str, int], trans_info: int, mutation: Mutation, drop: int
) -> bytes:
    """``pb`` with ``mutation`` applied to its named fields and trans_info entries (and field
    ``drop`` left out): untouched fields keep their bytes and order, new ones go last."""
    added = dict(mutation.add)
    touched = set(mutation.remove) | set(added)
    named = {names[key] for key in touched if key in names}
    kept: list[bytes] = []
    for field in read_fields(pb):
        number = field.number
        if number == drop or number in named:
            continue
        if number == trans_info and field.wire_type is WireType.LEN:
            key = read_map_entry(field)[0].decode(errors="replace").lower()
            if key in touched:
                continue
        kept.append(pb[field.offset : field.end])
    for key, value in added.items():
        named_number = names.get(key)
        if named_number is not None:
            kept.append(encode_len_field(named_number, value.encode()))
        else:
            entry = encode_len_field(1, key.encode()) + encode_len_field(2, value.encode())
            kept.append(encode_len_field(trans_info, entry))
    return b"".join(kept)


class TrpcCodec:
    """One side of one tRPC connection."""

    name: ClassVar[str] = "trpc"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = True

    __slots__ = ("max_message_size", "side")

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        if options:
            raise ValueError(f"trpc takes no codec_options, got {sorted(options)}")
        self.side = side
        self.max_message_size = max_message_size

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) < HEADER_SIZE:
            return NEED_DATA
        magic, frame_type, stream_frame, total, pb_size, stream_id, _ = FIXED_HEADER.unpack_from(
            buffer
        )
        if magic != MAGIC:
            raise ProtocolError(f"tRPC: bad magic 0x{magic:04x}")
        if total > self.max_message_size:
            raise ProtocolError(
                f"tRPC frame of {total} bytes is too large", ErrorType.MESSAGE_TOO_LARGE
            )
        if total < HEADER_SIZE + pb_size:
            raise ProtocolError(f"tRPC: total size {total} < 16 + pb header size {pb_size}")
        if frame_type == FrameType.UNARY:
            if stream_frame != StreamFrame.UNARY:
                raise ProtocolError(f"tRPC: unary frame with stream frame type {stream_frame}")
        elif frame_type == FrameType.STREAM:
            if not StreamFrame.INIT <= stream_frame <= StreamFrame.CLOSE:
                raise ProtocolError(f"tRPC: unknown stream frame type {stream_frame}")
        else:
            raise ProtocolError(f"tRPC: unknown data frame type {frame_type}")
        if len(buffer) < total:
            return NEED_DATA
        frame = bytes(buffer[:total])
        del buffer[:total]
        # From here on the frame is consumed: a bad header is not fatal to the connection.
        try:
            if frame_type == FrameType.UNARY:
                if self.side is Side.DOWNSTREAM:
                    return self._request(frame, pb_size)
                return self._response(frame, pb_size)
            if pb_size:
                raise ProtocolError("stream frame with a pb header")
            return self._stream(frame, stream_frame, stream_id)
        except ProtocolError as exc:
            raise ProtocolError(f"tRPC: {exc}", fatal=False) from None

    def _request(self, frame: bytes, pb_size: int) -> Message:
        end = HEADER_SIZE + pb_size
        props, varints = scan_header(frame, HEADER_SIZE, end, _REQUEST_FIELDS, _REQUEST_TRANS)
        id_field = varints.get(_REQUEST_ID)
        request_id = id_field.int_value & _U32 if id_field is not None else 0
        call_type = varints.get(_CALL_TYPE)
        oneway = call_type is not None and call_type.int_value == 1
        mtype = MessageType.ONEWAY if oneway else MessageType.REQUEST
        body = len(frame) - end
        return Message(mtype, frame, request_id, props, _OK, None, end, body, id_field)

    def _response(self, frame: bytes, pb_size: int) -> Message:
        end = HEADER_SIZE + pb_size
        props, varints = scan_header(frame, HEADER_SIZE, end, _NO_FIELDS, _RESPONSE_TRANS)
        id_field = varints.get(_REQUEST_ID)
        request_id = id_field.int_value & _U32 if id_field is not None else 0
        failed = False
        for number in (_RET, _FUNC_RET):
            code = varints.get(number)
            if code is not None and as_int32(code.int_value) != 0:
                failed = True
        status = _ERROR if failed else _OK
        body = len(frame) - end
        mtype = MessageType.RESPONSE
        return Message(mtype, frame, request_id, props, status, None, end, body, id_field)

    def _stream(self, frame: bytes, stream_frame: int, stream_id: int) -> Message:
        props: dict[str, str] = {}
        status = _OK
        downstream = self.side is Side.DOWNSTREAM
        if stream_frame == StreamFrame.INIT:
            props, failed = _init_meta(frame)
            if downstream:
                mtype = MessageType.STREAM_INIT
            elif failed:
                props = {}
                mtype, status = MessageType.ERROR, _ERROR  # the server refused the stream
            else:
                mtype = MessageType.STREAM_DATA
        elif stream_frame == StreamFrame.CLOSE:
            reset, failed = _close_meta(frame)
            if downstream:
                mtype = MessageType.STREAM_CLOSE
                status = _ERROR if reset else _OK
            elif reset or failed:
                mtype, status = MessageType.ERROR, _ERROR
            else:
                mtype = MessageType.STREAM_CLOSE
        else:
            if stream_frame == StreamFrame.FEEDBACK:
                read_fields(frame, HEADER_SIZE)  # a window update: checked, passed through
            mtype = MessageType.STREAM_DATA
        body = len(frame) - HEADER_SIZE
        return Message(mtype, frame, stream_id, props, status, stream_id, HEADER_SIZE, body, None)

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        frame = message.frame
        if mutation:
            return self._mutate(message, request_id, mutation)
        if request_id is None or request_id == message.request_id:
            return frame  # zero-copy pass-through
        if frame[2] == FrameType.STREAM:
            return frame[:10] + _STREAM_ID.pack(request_id) + frame[14:]
        return _set_request_id(frame, message.codec_data, request_id)

    def _mutate(self, message: Message, request_id: int | None, mutation: Mutation) -> bytes:
        frame = message.frame
        mtype = message.type
        if frame[2] == FrameType.UNARY:
            names = _NO_NAMES if mtype is MessageType.RESPONSE else _REQUEST_NAMES
            trans_info = (
                ResponseField.TRANS_INFO
                if mtype is MessageType.RESPONSE
                else RequestField.TRANS_INFO
            )
            end = HEADER_SIZE + _pb_header_size(frame)
            drop = RequestField.REQUEST_ID if request_id is not None else 0
            pb = _mutated_fields(frame[HEADER_SIZE:end], names, trans_info, mutation, drop)
            if request_id:
                pb += encode_varint_field(RequestField.REQUEST_ID, request_id)
            return _with_sizes(frame[:HEADER_SIZE] + pb + frame[end:], len(pb))
        if mtype is not MessageType.STREAM_INIT:
            raise ProtocolError(
                f"tRPC: a {mtype.value} stream frame has no metadata to mutate", fatal=False
            )
        outer = read_fields(frame, HEADER_SIZE)
        inner = b"".join(f.bytes_value for f in outer if f.number == InitMeta.REQUEST_META)
        inner = _mutated_fields(inner, _INIT_NAMES, InitRequestMeta.TRANS_INFO, mutation, 0)
        rest = [frame[f.offset : f.end] for f in outer if f.number != InitMeta.REQUEST_META]
        meta = encode_len_field(InitMeta.REQUEST_META, inner) + b"".join(rest)
        sid = message.request_id if request_id is None else request_id
        head = FIXED_HEADER.pack(
            MAGIC, FrameType.STREAM, StreamFrame.INIT, HEADER_SIZE + len(meta), 0, sid or 0, 0
        )
        return head + meta

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        ret = RET_CODES[error]
        if request is None:
            return build_response(0, ret=ret, error_msg=detail)
        rid = request.request_id or 0
        if request.stream_id is not None:  # a stream: reset it, with the reason
            return build_close(rid, reset=True, ret=ret, msg=detail)
        return build_response(rid, ret=ret, error_msg=detail)

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        return None  # tRPC over TCP has no heartbeat frames


def _set_request_id(frame: bytes, id_field: Field | None, request_id: int) -> bytes:
    """A unary frame with another request id: only the varint changes (and the two sizes)."""
    pb_size = _pb_header_size(frame)
    if id_field is None:  # id 0 is left out on the wire: the field goes at the header's end
        end = HEADER_SIZE + pb_size
        field = encode_varint_field(RequestField.REQUEST_ID, request_id)
        rewritten, delta = splice(frame, end, end, field)
    elif request_id == 0:  # back to the default: the field goes (so a round trip is exact)
        rewritten, delta = splice(frame, id_field.offset, id_field.end, b"")
    else:
        rewritten, delta = rewrite_varint(frame, id_field, request_id)
    return _with_sizes(rewritten, pb_size + delta)


def _init_meta(frame: bytes) -> tuple[dict[str, str], bool]:
    """The routing properties of an INIT frame's request meta, and whether its response meta
    is a failure (both nested messages are checked, whichever side reads the frame)."""
    props: dict[str, str] = {}
    failed = False
    for field in read_fields(frame, HEADER_SIZE):
        if field.number == InitMeta.REQUEST_META:
            found, _ = scan_header(
                frame, field.value_offset, field.end, _INIT_FIELDS, InitRequestMeta.TRANS_INFO
            )
            props.update(found)  # repeated embedded messages merge
        elif field.number == InitMeta.RESPONSE_META:
            for inner in read_fields(field.bytes_value):
                if inner.number == InitResponseMeta.RET:
                    failed = as_int32(inner.int_value) != 0
    return props, failed


def _close_meta(frame: bytes) -> tuple[bool, bool]:
    """Whether a CLOSE frame is a reset, and whether it carries a framework error."""
    reset = False
    failed = False
    for field in read_fields(frame, HEADER_SIZE):
        if field.number == CloseMeta.CLOSE_TYPE:
            reset = as_int32(field.int_value) == CLOSE_RESET
        elif field.number == CloseMeta.RET:
            failed = as_int32(field.int_value) != 0
        elif field.number == CloseMeta.TRANS_INFO:
            read_map_entry(field)
    return reset, failed

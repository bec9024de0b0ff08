"""A tRPC unary codec on top of metaprotocol.codecs.protobuf (docs/writing-a-codec.md, 5)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from metaprotocol.codecs import protobuf as pbuf
from metaprotocol.core.codec import Ordering, Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, MessageType, ProtocolError

HEAD = struct.Struct(">HBBIHIH")  # magic, frame type, stream frame type, total, pb size, ...
NAMES = {5: "caller", 6: "callee", 7: "func"}  # RequestProtocol fields (trpc.proto)


class TrpcUnaryCodec:
    name = "trpc-unary"
    ordering = Ordering.MULTIPLEXED
    supports_mutation = False

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        self.side, self.max_message_size = side, max_message_size

    def decode(self, buffer: bytearray) -> Message | Any:
        if len(buffer) < 16:
            return NEED_DATA
        magic, frame_type, stream_type, total, pb_size, _, _ = HEAD.unpack_from(buffer)
        if magic != 0x0930 or frame_type or stream_type or total < 16 + pb_size:
            raise ProtocolError("not a tRPC unary frame")
        if total > self.max_message_size:
            raise ProtocolError("frame too large", ErrorType.MESSAGE_TOO_LARGE)
        if len(buffer) < total:
            return NEED_DATA
        frame = bytes(buffer[:total])
        del buffer[:total]
        rid, id_field, oneway, props = 0, None, False, {}
        try:
            for field in pbuf.read_fields(frame, 16, 16 + pb_size):
                if field.number == 3:  # request_id
                    rid, id_field = field.int_value, field
                elif field.number == 2 and self.side is Side.DOWNSTREAM:  # call_type
                    oneway = field.int_value == 1
                elif field.number in NAMES and self.side is Side.DOWNSTREAM:
                    props[NAMES[field.number]] = field.text()
                elif field.number == (9 if self.side is Side.DOWNSTREAM else 8):  # trans_info
                    key, value = pbuf.read_map_entry(field)
                    props[key.decode(errors="replace").lower()] = value.decode(errors="replace")
        except ProtocolError as exc:
            raise ProtocolError(str(exc), fatal=False) from None
        if self.side is Side.UPSTREAM:
            mtype = MessageType.RESPONSE
        else:
            mtype = MessageType.ONEWAY if oneway else MessageType.REQUEST
        return Message(mtype, frame, rid, props, codec_data=id_field)

    def encode(
        self, message: Message, *, request_id: int | None = None, mutation: Any = None
    ) -> bytes:
        frame = message.frame
        if request_id is None or request_id == message.request_id:
            return frame
        pb_size = HEAD.unpack_from(frame)[4]
        if message.codec_data is None:  # id 0 is not on the wire: add the field at the end
            end, field = 16 + pb_size, pbuf.encode_varint_field(3, request_id)
            frame, delta = frame[:end] + field + frame[end:], len(field)
        else:
            frame, delta = pbuf.rewrite_varint(frame, message.codec_data, request_id)
        return frame[:4] + struct.pack(">IH", len(frame), pb_size + delta) + frame[10:]

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes:
        ret = 11 if error is ErrorType.ROUTE_NOT_FOUND else 999  # TrpcRetCode
        rid = request.request_id or 0 if request is not None else 0
        pb = pbuf.encode_varint_field(3, rid) + pbuf.encode_varint_field(4, ret)
        reason = detail[:1024].encode(errors="replace")  # the pb header's size is 16 bits
        pb += pbuf.encode_len_field(6, reason)  # error_msg
        return HEAD.pack(0x0930, 0, 0, 16 + len(pb), len(pb), 0, 0) + pb

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        return None

"""tRPC harnesses: client frames (unary requests, stream INIT/DATA/FEEDBACK/CLOSE) decoded
downstream, server frames decoded upstream.

Selector: bit 0 a small ``max_message_size`` (512 bytes instead of 64 KiB).
"""

from __future__ import annotations

from metaprotocol.codecs.trpc import TrpcCodec, build_close, build_request, build_response
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, MessageType, Mutation, ProtocolError

from .common import Finding, check_encodes, check_error, drive, split_input, vectors

__all__ = ["request", "request_seeds", "response", "response_seeds"]

MUTATION = Mutation(add=(("x-fuzz", "1"),), remove=("caller",))


def _run(data: bytes, side: Side) -> None:
    selector, chunk, wire = split_input(data)
    limit = 512 if selector & 1 else 64 * 1024
    codec = TrpcCodec(side, {}, limit)
    other = TrpcCodec(Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM, {}, limit)

    def redecode(frame: bytes) -> Message | None:
        try:
            result = TrpcCodec(side, {}, 1 << 20).decode(bytearray(frame))
        except ProtocolError as exc:
            check_error(exc)
            return None
        return None if result is NEED_DATA else result

    def on_message(message: Message) -> None:
        check_encodes(other, message, passthrough=True, rewrite=redecode)
        if message.type not in (MessageType.REQUEST, MessageType.ONEWAY, MessageType.STREAM_INIT):
            return
        try:
            mutated = other.encode(message, mutation=MUTATION)
        except ProtocolError as exc:
            check_error(exc)
            return
        again = redecode(mutated)
        if again is None or again.properties.get("x-fuzz") != "1":
            raise Finding(f"a mutated frame does not decode with its new key: {mutated!r}")
        if again.request_id != message.request_id:
            raise Finding(f"a mutation changed the id: {message!r} -> {again!r}")

    drive(codec, wire, chunk, limit, on_message=on_message)


def request(data: bytes) -> None:
    _run(data, Side.DOWNSTREAM)


def response(data: bytes) -> None:
    _run(data, Side.UPSTREAM)


def request_seeds() -> list[bytes]:
    frames = vectors("trpc", ("request", "client-to-server"))
    frames += [
        build_request(7, "/trpc.test.Greeter/SayHello", b"hi", caller="a", oneway=True),
        build_close(9, reset=True, ret=1, msg="gone"),
    ]
    return [bytes([s, c]) + f for f in frames for s, c in ((0, 0), (1, 5))]


def response_seeds() -> list[bytes]:
    frames = vectors("trpc", ("response", "server-to-client"))
    frames += [
        build_response(7, b"ok", trans_info={"k": b"v"}),
        build_response(8, ret=21, func_ret=-1, error_msg="late"),
    ]
    return [bytes([s, c]) + f for f in frames for s, c in ((0, 0), (1, 5))]

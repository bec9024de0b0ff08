"""Tests for the codec conformance kit: a tiny correct codec passes, each broken one fails."""

from __future__ import annotations

import importlib
import struct
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from metaprotocol.core.codec import Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    NeedData,
    ProtocolError,
)
from metaprotocol.testing.codecbench import measure_decode, measure_encode
from metaprotocol.testing.conformance import (
    CHECKS,
    CONFORMANCE_MUTATION,
    ERROR_DETAILS,
    LONG_ERROR_DETAIL,
    CodecUnderTest,
    check_codec,
    check_error_replies,
    check_fuzz,
    check_message_size_limit,
    check_mutation,
    check_prefixes,
    check_round_trip,
    check_split_feeding,
)

# --- a tiny protocol -----------------------------------------------------------------------
# frame = u32 length of the rest | u8 kind | u32 id | body: "key=value\n" lines (UTF-8)

_REQUEST, _RESPONSE, _PING, _PONG, _ERROR = range(5)
_KINDS = {
    _REQUEST: MessageType.REQUEST,
    _RESPONSE: MessageType.RESPONSE,
    _PING: MessageType.HEARTBEAT,
    _PONG: MessageType.HEARTBEAT,
    _ERROR: MessageType.ERROR,
}
_ACCEPTS = {Side.DOWNSTREAM: {_REQUEST, _PING}, Side.UPSTREAM: {_RESPONSE, _PONG, _ERROR}}


def tiny_frame(kind: int, request_id: int, properties: Mapping[str, str] = {}) -> bytes:
    body = "".join(f"{k}={v}\n" for k, v in properties.items()).encode()
    return struct.pack(">IBI", 5 + len(body), kind, request_id) + body


class TinyCodec:
    """A correct codec for the tiny protocol: the kit must find nothing wrong with it."""

    name: ClassVar[str] = "tiny"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = True

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        if set(options) - {"strict"}:
            raise ValueError(f"unknown tiny options: {sorted(options)}")
        self.side = side
        self.max_message_size = max_message_size

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) < 4:
            return NEED_DATA
        (length,) = struct.unpack_from(">I", buffer)
        if length < 5:
            raise ProtocolError(f"length {length} < 5")
        if 4 + length > self.max_message_size:
            raise ProtocolError("frame too large", ErrorType.MESSAGE_TOO_LARGE)
        if len(buffer) < 4 + length:
            return NEED_DATA
        kind, request_id = struct.unpack_from(">BI", buffer, 4)
        if kind not in _ACCEPTS[self.side]:
            raise ProtocolError(f"kind {kind} not accepted on the {self.side.name} side")
        frame = bytes(buffer[: 4 + length])
        properties = self._properties(frame[9:])
        del buffer[: 4 + length]
        return Message(
            type=_KINDS[kind],
            frame=frame,
            request_id=request_id,
            properties=properties,
            header_size=9,
            body_size=length - 5,
        )

    def _properties(self, body: bytes) -> dict[str, str]:
        try:
            text = body.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("body is not UTF-8") from exc
        properties: dict[str, str] = {}
        for line in text.split("\n")[:-1] if text else []:
            key, sep, value = line.partition("=")
            if not sep or key != key.lower():
                raise ProtocolError(f"bad property line {line!r}")
            properties[key] = value
        if text and not text.endswith("\n"):
            raise ProtocolError("body does not end with a newline")
        return properties

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        if not mutation and request_id is None:
            return message.frame
        rid = message.request_id if request_id is None else request_id
        assert rid is not None
        if not mutation:
            return message.frame[:5] + struct.pack(">I", rid) + message.frame[9:]
        properties = {k: v for k, v in message.properties.items() if k not in mutation.remove}
        properties.update(mutation.add)
        return tiny_frame(message.frame[4], rid, properties)

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        rid = request.request_id if request is not None and request.request_id else 0
        clean = detail.replace("\n", " ")
        return tiny_frame(_ERROR, rid, {"error": error.value, "detail": clean})

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        assert heartbeat.request_id is not None
        return tiny_frame(_PONG, heartbeat.request_id)


REQUESTS = [
    tiny_frame(_REQUEST, 1, {"method": "get", "key": "a"}),
    tiny_frame(_PING, 2),
    tiny_frame(_REQUEST, 3, {"method": "put", "key": "b" * 300, "value": "\u00fc"}),
]
RESPONSES = [
    tiny_frame(_RESPONSE, 1, {"status": "ok"}),
    tiny_frame(_PONG, 2),
    tiny_frame(_RESPONSE, 3, {"status": "ok", "value": "x" * 100}),
]


def check_tiny(factory: Any, **kwargs: Any) -> None:
    check_codec(factory, requests=REQUESTS, responses=RESPONSES, fuzz_iterations=100, **kwargs)


def test_correct_codec_passes_every_check() -> None:
    check_tiny(TinyCodec, seed=1)


def test_side_and_frames_shorthand_and_request_for_error() -> None:
    check_codec(TinyCodec, side=Side.DOWNSTREAM, frames=REQUESTS[:1], fuzz_iterations=20)
    check_codec(TinyCodec, side=Side.UPSTREAM, frames=RESPONSES, fuzz_iterations=20)
    check_codec(TinyCodec, request_for_error=REQUESTS[0], fuzz_iterations=0)


def test_unknown_skip_name_and_missing_side_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown check names"):
        check_codec(TinyCodec, requests=REQUESTS, skip=["speed"])
    with pytest.raises(ValueError, match="needs side"):
        check_codec(TinyCodec, frames=REQUESTS)


# --- broken codecs: each must be caught by the named check ---------------------------------


class IndexErrorOnGarbage(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) >= 5 and buffer[4] > 4:
            return [NEED_DATA][buffer[4]]  # IndexError: the bug the fuzz check is for
        return super().decode(buffer)


class ConsumesOneByteTooFew(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        result = super().decode(buffer)
        if isinstance(result, Message):
            buffer[:0] = result.frame[-1:]
        return result


class ErrorsOnShortHeader(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        if 0 < len(buffer) < 4:
            raise ProtocolError("short header")
        return super().decode(buffer)


class CopiesOnPassThrough(TinyCodec):
    def encode(
        self, message: Message, *, request_id: int | None = None, mutation: Mutation | None = None
    ) -> bytes:
        out = super().encode(message, request_id=request_id, mutation=mutation)
        return bytes(bytearray(out))


class StickyLength(TinyCodec):
    """Remembers the first frame length forever: fine alone, wrong on a stream."""

    _sticky: int | None = None

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) >= 4 and self._sticky is not None:
            buffer[:4] = struct.pack(">I", self._sticky)
        result = super().decode(buffer)
        if isinstance(result, Message):
            self._sticky = len(result.frame) - 4
        return result


class IgnoresRequestId(TinyCodec):
    def encode(
        self, message: Message, *, request_id: int | None = None, mutation: Mutation | None = None
    ) -> bytes:
        return super().encode(message, mutation=mutation)


class ErrorReplyWithoutId(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        return tiny_frame(_ERROR, 0, {"error": error.value})


class ErrorReplyBreaksOnNewline(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        rid = request.request_id if request is not None and request.request_id else 0
        return tiny_frame(_ERROR, rid, {"detail": detail})  # a raw "\r\n" breaks the body


class ErrorReplyIsRequest(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        return tiny_frame(_PONG, 0)


class NoErrorReply(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        return None


class HeartbeatReplyIsError(TinyCodec):
    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        return tiny_frame(_ERROR, 0)


class IgnoresMutation(TinyCodec):
    def encode(
        self, message: Message, *, request_id: int | None = None, mutation: Mutation | None = None
    ) -> bytes:
        return super().encode(message, request_id=request_id)


class NoSizeLimit(TinyCodec):
    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        super().__init__(side, options, 1 << 30)


class WrongSizeErrorType(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        try:
            return super().decode(buffer)
        except ProtocolError as exc:
            raise ProtocolError(str(exc)) from exc


class NonFatalErrorLoops(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        try:
            return super().decode(buffer)
        except ProtocolError as exc:
            raise ProtocolError(str(exc), fatal=False) from exc


class EmptyMessageOnZeroLength(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        if len(buffer) >= 4 and buffer[:4] == b"\0\0\0\0":
            return Message(type=MessageType.REQUEST, frame=b"")
        return super().decode(buffer)


class BadOrdering(TinyCodec):
    ordering: ClassVar[Ordering] = "multiplexed"  # type: ignore[assignment]


class FrameIsBytearray(TinyCodec):
    def decode(self, buffer: bytearray) -> Message | NeedData:
        result = super().decode(buffer)
        if isinstance(result, Message):
            result.frame = bytearray(result.frame)  # type: ignore[assignment]
        return result


def _message_is_compiled() -> bool:
    probe = Message(MessageType.REQUEST, b"")
    try:
        probe.frame = bytearray()  # type: ignore[assignment]
    except TypeError:
        return True
    return False


@pytest.mark.parametrize(
    ("codec", "check", "pattern"),
    [
        (IndexErrorOnGarbage, "fuzz", r"IndexError"),
        (ConsumesOneByteTooFew, "round_trip", r"left 1 of"),
        (ErrorsOnShortHeader, "prefixes", r"short header"),
        (CopiesOnPassThrough, "round_trip", r"message.frame itself"),
        (StickyLength, "split_feeding", r"split_feeding"),
        (IgnoresRequestId, "request_id_rewrite", r"decoded id"),
        (ErrorReplyWithoutId, "error_replies", r"reply id 0 != request id 1"),
        (ErrorReplyBreaksOnNewline, "error_replies", r"decode raised ProtocolError"),
        (ErrorReplyIsRequest, "error_replies", r"expected RESPONSE or ERROR"),
        (NoErrorReply, "error_replies", r"returned None for a decoded request"),
        (HeartbeatReplyIsError, "heartbeats", r"decoded as ERROR"),
        (IgnoresMutation, "mutation", r"added keys missing"),
        (NoSizeLimit, "size_limit", r"instead of an error"),
        (WrongSizeErrorType, "size_limit", r"error_type BAD_REQUEST"),
        (NonFatalErrorLoops, "fuzz", r"non-fatal ProtocolError consumed nothing"),
        (EmptyMessageOnZeroLength, "fuzz", r"consumed nothing"),
        (BadOrdering, "attributes", r"ordering"),
        (FrameIsBytearray, "round_trip", r"frame is <class 'bytearray'>"),
    ],
)
def test_broken_codec_fails_the_named_check(codec: Any, check: str, pattern: str) -> None:
    if codec is FrameIsBytearray and _message_is_compiled():
        pattern = r"bytes object expected"  # the compiled Message refuses it by itself
    with pytest.raises(AssertionError, match=rf"\[conformance:{check}\]") as info:
        check_tiny(codec, skip=[name for name in CHECKS if name != check])
    assert info.match(pattern)


def test_individual_checks_are_public_and_pass_on_the_correct_codec() -> None:
    cut = CodecUnderTest(TinyCodec, REQUESTS, RESPONSES)
    check_round_trip(cut)
    check_split_feeding(cut, seed=3)
    check_prefixes(cut, seed=3)
    check_fuzz(cut, seed=3, iterations=30)
    check_error_replies(cut)
    check_message_size_limit(cut)


def test_failure_message_names_the_frame_and_seed() -> None:
    with pytest.raises(AssertionError) as info:
        check_fuzz(CodecUnderTest(IndexErrorOnGarbage, REQUESTS, RESPONSES), seed=42)
    text = str(info.value)
    assert "seed=42" in text
    assert "bytes: " in text


def test_fuzz_is_deterministic_for_a_seed() -> None:
    def failure(seed: int) -> str:
        with pytest.raises(AssertionError) as info:
            check_fuzz(CodecUnderTest(IndexErrorOnGarbage, REQUESTS, RESPONSES), seed=seed)
        return str(info.value)

    assert failure(7) == failure(7)


# --- planted bugs the kit's defaults once missed -------------------------------------------
# Each broken codec passes what the kit checked before (a mutation that only adds a key,
# error details of a few bytes) and fails what it checks now.

_ADD_ONLY = Mutation(add=(("x-conformance", "yes"),))  # the kit's default mutation before
_SHORT_DETAILS = ERROR_DETAILS[:2]  # the kit's error details before


class IgnoresRemove(TinyCodec):
    """Applies ``Mutation.add`` and silently drops ``Mutation.remove``."""

    def encode(
        self, message: Message, *, request_id: int | None = None, mutation: Mutation | None = None
    ) -> bytes:
        if mutation:
            mutation = Mutation(add=mutation.add)
        return super().encode(message, request_id=request_id, mutation=mutation)


def _detail_frame(rid: int, error: ErrorType, detail: str, *, wrap: bool) -> bytes:
    """An error frame whose length field stands for a 16-bit one: it raises past 64 KiB,
    or (``wrap``) silently keeps the low 16 bits, leaving the reply unframed."""
    body = f"error={error.value}\ndetail={detail.replace(chr(10), ' ')}\n".encode()
    length = 5 + len(body)
    if wrap:
        length &= 0xFFFF
    else:
        struct.pack(">H", length)  # struct.error past 65,535, as a real 16-bit field would
    return struct.pack(">IBI", length, _ERROR, rid) + body


class LongDetailCrashes(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        rid = request.request_id if request is not None and request.request_id else 0
        return _detail_frame(rid, error, detail, wrap=False)


class LongDetailUnframed(TinyCodec):
    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        rid = request.request_id if request is not None and request.request_id else 0
        return _detail_frame(rid, error, detail, wrap=True)


def test_the_default_mutation_adds_and_removes() -> None:
    assert CONFORMANCE_MUTATION.add and CONFORMANCE_MUTATION.remove


def test_a_codec_ignoring_remove_is_caught() -> None:
    cut = CodecUnderTest(IgnoresRemove, REQUESTS, RESPONSES)
    check_mutation(cut, _ADD_ONLY)  # what the kit tried before: passes
    with pytest.raises(AssertionError, match=r"\[conformance:mutation\]") as info:
        check_mutation(cut)
    assert info.match(r"removed keys still there: \['x-conformance-gone'\]")
    with pytest.raises(AssertionError, match=r"removed keys still there"):
        check_tiny(IgnoresRemove, skip=[name for name in CHECKS if name != "mutation"])


def test_removing_a_key_the_message_carries_needs_no_planting() -> None:
    check_mutation(CodecUnderTest(TinyCodec, REQUESTS, RESPONSES), Mutation(remove=("key",)))
    with pytest.raises(AssertionError, match=r"removed keys still there: \['key'\]"):
        check_mutation(
            CodecUnderTest(IgnoresRemove, REQUESTS, RESPONSES), Mutation(remove=("key",))
        )


def test_the_long_error_detail_is_100_kib() -> None:
    assert LONG_ERROR_DETAIL in ERROR_DETAILS
    assert len(LONG_ERROR_DETAIL) == 100 * 1024


@pytest.mark.parametrize(
    ("codec", "pattern"),
    [
        (LongDetailCrashes, r"<102400 characters>\) raised error\(.*65535"),
        (LongDetailUnframed, r"<102400 characters>\): decode (left|raised)"),
    ],
)
def test_a_codec_failing_on_a_long_error_detail_is_caught(codec: Any, pattern: str) -> None:
    cut = CodecUnderTest(codec, REQUESTS, RESPONSES)
    check_error_replies(cut, _SHORT_DETAILS)  # what the kit tried before: passes
    with pytest.raises(AssertionError, match=r"\[conformance:error_replies\]") as info:
        check_tiny(codec, skip=[name for name in CHECKS if name != "error_replies"])
    assert info.match(pattern)
    assert len(str(info.value)) < 2000  # the 100 KiB detail is named, not printed


# --- real codecs, when present ---------------------------------------------------------------


def test_lengthprefixed_tutorial_codec_conforms() -> None:
    try:
        module = importlib.import_module("metaprotocol.codecs.lengthprefixed")
    except ImportError:
        pytest.skip("metaprotocol.codecs.lengthprefixed is not written yet")
    build = module.build_frame
    requests = [
        build(1, 5, {"method": "get", "key": "a"}, b"body"),
        build(4, 6),
        build(3, 7, {"method": "log"}, b"x" * 400),
        build(6, 9, {"method": "watch"}),
    ]
    responses = [build(2, 5, {"status": "ok"}, b"value"), build(5, 6), build(2, 7, {}, b"y" * 300)]
    check_codec(module.LengthPrefixedCodec, requests=requests, responses=responses)


# --- the benchmark helper --------------------------------------------------------------------


def test_measure_decode_counts_every_message_and_byte() -> None:
    result = measure_decode(TinyCodec, Side.DOWNSTREAM, REQUESTS, seconds=0.01)
    assert result.operation == "decode"
    assert result.seconds >= 0.01
    per_unit = len(REQUESTS)
    assert result.messages % per_unit == 0
    assert result.messages >= per_unit
    assert result.total_bytes * per_unit == result.messages * len(b"".join(REQUESTS))
    # The fastest batch is at least as fast as the mean over the run.
    assert result.batch_messages % per_unit == 0 and result.batch_messages > 0
    assert result.best_msgs_per_s >= result.msgs_per_s
    assert result.msgs_per_s == pytest.approx(result.messages / result.seconds)
    assert result.mb_per_s == pytest.approx(result.total_bytes / result.seconds / 1e6)
    assert "msgs/s" in str(result)


@pytest.mark.parametrize(
    ("kwargs", "operation"),
    [
        ({}, "encode pass-through"),
        ({"mutation": Mutation(add=(("x", "1"),))}, "encode mutated"),
        ({"rewrite_ids": True}, "encode id rewrite"),
    ],
)
def test_measure_encode_operations(kwargs: dict[str, Any], operation: str) -> None:
    result = measure_encode(TinyCodec, Side.UPSTREAM, RESPONSES, seconds=0.01, **kwargs)
    assert result.operation == operation
    assert result.messages > 0
    assert result.total_bytes > 0


def test_measure_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        measure_decode(TinyCodec, Side.DOWNSTREAM, [])
    with pytest.raises(ValueError, match="do not decode completely"):
        measure_decode(TinyCodec, Side.DOWNSTREAM, [struct.pack(">IBI", 100_000, _REQUEST, 1)])
    with pytest.raises(ValueError, match="no ids to rewrite"):
        measure_encode(Ordered, Side.DOWNSTREAM, REQUESTS, rewrite_ids=True)


class Ordered(TinyCodec):
    ordering: ClassVar[Ordering] = Ordering.ORDERED

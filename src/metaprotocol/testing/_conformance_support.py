"""Private helpers of the conformance kit: snapshots, feeding, fuzz inputs, failures."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from metaprotocol.core.codec import Codec, Side
from metaprotocol.core.message import NEED_DATA, Message, ProtocolError

__all__: list[str] = []  # nothing public: the kit's API is metaprotocol.testing.conformance

_HEX_LIMIT = 160  # bytes of a frame shown in a failure message

_Snapshot = tuple[Any, ...]


def _snapshot(message: Message, *, loose: bool = False) -> _Snapshot:
    """What must match between two decodes of the same bytes (``codec_data`` is private).

    ``loose`` keeps only what an id rewrite must not change: the id itself, the frame, its
    sizes (a varint id changes them) and a stream id that follows the request id go.
    """
    if loose:
        return (message.type, None, dict(message.properties), message.status, None, b"", None, None)
    return (
        message.type,
        message.request_id,
        dict(message.properties),
        message.status,
        message.stream_id,
        message.frame,
        message.header_size,
        message.body_size,
    )


def _describe(snapshot: _Snapshot) -> str:
    kind, rid, props, status, stream, frame, header, body = snapshot
    return (
        f"type={kind.name} id={rid} status={status.name} stream={stream} props={props} "
        f"header_size={header} body_size={body} frame={_hex(frame)}"
    )


def _decode_one(codec: Codec, frame: bytes, check: str, where: str) -> Message:
    """Decode one whole frame; it must give one message consuming exactly its bytes."""
    ok = _Checker(check)
    buffer = bytearray(frame)
    try:
        result = codec.decode(buffer)
    except Exception as exc:
        raise ok.fail(f"{where}: decode raised {exc!r}", frame) from exc
    if not isinstance(result, Message):
        raise ok.fail(f"{where}: decode gave {result!r}", frame)
    ok(not buffer, f"{where}: decode left {len(buffer)} of {len(frame)} bytes in the buffer", frame)
    ok(type(result.frame) is bytes, f"{where}: frame is {type(result.frame)}")
    ok(result.frame == frame, f"{where}: message.frame differs", frame)
    return result


def _decode_all(codec: Codec, frames: Sequence[bytes], label: str) -> list[Message]:
    return [
        _decode_one(codec, frame, "decode", f"{label}[{index}]")
        for index, frame in enumerate(frames)
    ]


def _feed(
    codec: Codec, chunks: Sequence[bytes], ok: _Checker, where: str, *, fuzz: bool = False
) -> list[_Snapshot]:
    """Feed chunks like a connection does; every decode must obey the consume rules.

    ``fuzz`` allows ProtocolError (a fatal one ends the input) and leftover bytes. Decode
    calls are bounded by ``len(data) + len(chunks) + 1``: more means the codec loops.
    """
    data = b"".join(chunks)
    buffer = bytearray()
    budget = len(data) + len(chunks) + 1
    out: list[_Snapshot] = []
    for chunk in chunks:
        buffer += chunk
        while True:
            budget -= 1
            ok(budget >= 0, f"{where}: too many decode calls (a loop)", data)
            before = bytes(buffer)
            try:
                result = codec.decode(buffer)
            except ProtocolError as exc:
                if not fuzz:
                    raise ok.fail(f"{where}: decode raised {exc!r}", before) from exc
                if exc.fatal:
                    return out
                message = f"{where}: non-fatal ProtocolError consumed nothing (the proxy loops)"
                ok(len(buffer) < len(before), message, data)
                continue
            except Exception as exc:
                raise ok.fail(
                    f"{where}: decode raised {exc!r} (not a ProtocolError)", data
                ) from exc
            if result is NEED_DATA:
                ok(buffer == before, f"{where}: NEED_DATA consumed bytes", before)
                break
            if not isinstance(result, Message):
                raise ok.fail(f"{where}: decode returned {result!r}", before)
            consumed = len(before) - len(buffer)
            ok(consumed > 0, f"{where}: message consumed nothing", before)
            ok(
                before[:consumed] == result.frame and before[consumed:] == buffer,
                f"{where}: the {consumed} consumed bytes are not message.frame",
                before,
            )
            out.append(_snapshot(result))
    ok(fuzz or not buffer, f"{where}: {len(buffer)} bytes left undecoded", bytes(buffer))
    return out


def _fuzz_input(rng: random.Random, frames: Sequence[bytes]) -> tuple[bytes, str]:
    frame = rng.choice(frames)
    kind = rng.randrange(7)
    if kind == 0 or not frame:
        size = rng.randrange(0, 2 * max(len(frame), 32) + 1)
        return rng.randbytes(size), "random bytes"
    if kind == 1:
        data = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), "bit flips"
    if kind == 2:
        data = bytearray(frame)
        for _ in range(rng.randint(1, 2)):
            data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        return bytes(data), "interesting bytes"
    if kind == 3:
        cut = rng.randrange(len(frame))
        return frame[:cut] + rng.randbytes(rng.randint(1, 64)), "truncated + garbage"
    if kind == 4:
        return frame * rng.randint(2, 3), "duplicated"
    if kind == 5:
        cut = rng.randrange(len(frame))
        return frame[:cut] + rng.choice(frames), "truncated + another frame"
    start = rng.randrange(len(frame))
    return frame[start:] + frame[:start], "rotated"


def _random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    chunks: list[bytes] = []
    position = 0
    while position < len(data):
        size = rng.randint(1, max(1, len(data) // 3))
        chunks.append(data[position : position + size])
        position += size
    return chunks or [b""]


def _other(side: Side) -> Side:
    return Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM


def _label(side: Side) -> str:
    return "requests" if side is Side.DOWNSTREAM else "responses"


def _hex(data: bytes) -> str:
    if len(data) <= _HEX_LIMIT:
        return data.hex()
    return f"{data[:_HEX_LIMIT].hex()}... ({len(data)} bytes)"


def _failure(check: str, message: str, data: bytes | None = None) -> AssertionError:
    suffix = f"\n  bytes: {_hex(data)}" if data is not None else ""
    return AssertionError(f"[conformance:{check}] {message}{suffix}")


class _Checker:
    """Assertions of one named check."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, condition: bool, message: str, data: bytes | None = None) -> None:
        if not condition:
            raise _failure(self.name, message, data)

    def fail(self, message: str, data: bytes | None = None) -> AssertionError:
        return _failure(self.name, message, data)

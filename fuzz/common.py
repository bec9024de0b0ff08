"""What every codec harness checks: typed errors only, progress, bounded buffers and state.

A codec input is ``selector, chunk, wire...``: the selector picks the codec options (each
harness documents its bits), ``chunk`` the size of the pieces the wire bytes arrive in
(0: all at once), the rest is what the peer sent. :func:`drive` feeds the pieces into one
growing buffer the way the core does and raises :class:`Finding` when a rule is broken;
any exception other than ``ProtocolError`` escapes as it is (a finding too).
"""

from __future__ import annotations

import collections
import enum
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaprotocol.core.codec import Codec, Ordering
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = [
    "DATA_DIR",
    "REWRITTEN_ID",
    "Finding",
    "Target",
    "check_message",
    "drive",
    "retained_size",
    "split_input",
    "vectors",
]

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "codecs" / "data"
REWRITTEN_ID = 0x12345678  # the id the encode checks rewrite to (fits every codec's field)
# What a codec may keep buffered after NEED_DATA beyond max_message_size: the bytes of a
# frame header (or a head line) it needs before it can tell the frame is too large.
BUFFER_SLACK = 64
# What a codec may retain besides the buffer: per-connection caches and one parsed head.
STATE_SLACK = 64 * 1024


class Finding(AssertionError):
    """A harness rule was broken (the message says which)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One fuzz target: a harness of one input and the seeds it starts from."""

    name: str
    harness: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    # Modules atheris instruments for coverage (their import must come after setup).
    instrument: tuple[str, ...] = ("metaprotocol",)


def split_input(data: bytes) -> tuple[int, int, bytes]:
    """``(selector, chunk, wire)`` of a codec input (missing leading bytes are zero)."""
    selector = data[0] if data else 0
    chunk = data[1] if len(data) > 1 else 0
    return selector, chunk, data[2:]


def vectors(protocol: str, directions: tuple[str, ...]) -> list[bytes]:
    """The golden frames of ``protocol`` sent in one of ``directions``."""
    path = DATA_DIR / "vectors" / "wire-vectors.json"
    entries: list[dict[str, Any]] = json.loads(path.read_text())
    return [
        bytes.fromhex(e["hex"])
        for e in entries
        if e["protocol"] == protocol and e["direction"] in directions
    ]


def _pieces(wire: bytes, chunk: int) -> Iterator[bytes]:
    if chunk == 0:
        yield wire
        return
    for at in range(0, len(wire), chunk):
        yield wire[at : at + chunk]


def check_error(exc: ProtocolError) -> None:
    if not isinstance(exc.error_type, ErrorType) or not isinstance(exc.fatal, bool):
        raise Finding(f"malformed ProtocolError: {exc!r} ({exc.error_type!r}, {exc.fatal!r})")


def check_message(message: object) -> Message:
    """The fields the core relies on have the documented types."""
    if not isinstance(message, Message):
        raise Finding(f"decode returned {message!r}, neither a Message nor NEED_DATA")
    if not isinstance(message.type, MessageType) or not isinstance(message.status, ResponseStatus):
        raise Finding(f"bad type or status: {message!r}")
    if type(message.frame) is not bytes or not message.frame:
        raise Finding(f"frame must be non-empty bytes: {message!r}")
    if message.request_id is not None and type(message.request_id) is not int:
        raise Finding(f"request_id must be an int or None: {message!r}")
    if message.count < 1:
        raise Finding(f"count must be positive: {message!r}")
    for key, value in message.properties.items():
        if type(key) is not str or type(value) is not str:
            raise Finding(f"properties must map str to str: {key!r}: {value!r}")
    return message


def drive(
    codec: Codec,
    wire: bytes,
    chunk: int,
    max_message_size: int,
    *,
    decode: Callable[[bytearray], Message | NeedData] | None = None,
    on_message: Callable[[Message], None] | None = None,
    drops: bool = False,
) -> list[Message]:
    """Feed ``wire`` in pieces of ``chunk`` bytes, decoding after each piece until NEED_DATA
    or a fatal ``ProtocolError``; at the end, call the ``decode_eof`` hook if there is one.

    Rules: every step consumes bytes or asks for more (a loop that cannot terminate is a
    finding), NEED_DATA consumes nothing (or drops the whole buffer, for a codec that reads
    no more on this connection; ``drops``: or drops what the protocol says to ignore, like
    HTTP's interim responses), a non-fatal error consumes the bad bytes, and what stays
    buffered after NEED_DATA is bounded by ``max_message_size``.
    """
    step = codec.decode if decode is None else decode
    buffer = bytearray()
    messages: list[Message] = []
    pieces = list(_pieces(wire, chunk))
    # Each step consumes a byte, except the last one of each piece (NEED_DATA).
    steps_left = len(wire) + len(pieces) + 1
    for piece in pieces:
        buffer += piece
        while buffer:
            steps_left -= 1
            if steps_left < 0:
                raise Finding("the decode loop makes no progress")
            before = len(buffer)
            try:
                result = step(buffer)
            except ProtocolError as exc:
                check_error(exc)
                if exc.fatal:
                    return messages
                if len(buffer) >= before:
                    raise Finding(f"a non-fatal ProtocolError consumed nothing: {exc}") from None
                continue
            if result is NEED_DATA:
                if len(buffer) not in (before, 0) and not drops:
                    raise Finding(f"NEED_DATA consumed {before - len(buffer)} of {before} bytes")
                if len(buffer) > max_message_size + BUFFER_SLACK:
                    raise Finding(
                        f"{len(buffer)} bytes buffered waiting for a message "
                        f"(max_message_size {max_message_size})"
                    )
                break
            message = check_message(result)
            if len(buffer) >= before:
                raise Finding(f"a message consumed nothing: {message!r}")
            messages.append(message)
            if on_message is not None:
                on_message(message)
    decode_eof: Callable[[bytearray], Message | None] | None = getattr(codec, "decode_eof", None)
    if decode_eof is not None:
        try:
            last = decode_eof(buffer)
        except ProtocolError as exc:
            check_error(exc)
        else:
            if last is not None:
                messages.append(check_message(last))
                if on_message is not None:
                    on_message(last)
    retained = retained_size(codec)
    if retained > 4 * len(wire) + STATE_SLACK:
        raise Finding(f"the codec retains {retained} units of state after {len(wire)} bytes")
    return messages


def check_encodes(
    encoder: Codec,
    message: Message,
    *,
    passthrough: bool,
    rewrite: Callable[[bytes], Message | None] | None = None,
) -> None:
    """What the core does with a decoded message on the other side: forward it untouched,
    with its request id rewritten, and answer it with an error; only ``ProtocolError``
    may come out. ``rewrite`` decodes a rewritten frame again: it must carry the new id."""
    try:
        data = encoder.encode(message)
    except ProtocolError as exc:
        check_error(exc)
    else:
        if type(data) is not bytes:
            raise Finding(f"encode returned {type(data).__name__}, not bytes")
        if passthrough and data is not message.frame:
            raise Finding("an unmutated message with no new id was not passed through")
    if message.request_id is not None and encoder.ordering is Ordering.MULTIPLEXED:
        try:
            data = encoder.encode(message, request_id=REWRITTEN_ID)
        except ProtocolError as exc:
            check_error(exc)
        else:
            if rewrite is not None:
                again = rewrite(data)
                if again is None or again.request_id != REWRITTEN_ID:
                    raise Finding(f"the rewritten frame does not carry the new id: {again!r}")
    for error in (ErrorType.ROUTE_NOT_FOUND, ErrorType.MESSAGE_TOO_LARGE):
        try:
            reply = encoder.encode_error(message, error, "fuzz")
        except ProtocolError as exc:
            check_error(exc)
        else:
            if reply is not None and type(reply) is not bytes:
                raise Finding(f"encode_error returned {type(reply).__name__}")
    if message.type is MessageType.HEARTBEAT:
        try:
            pong = encoder.encode_heartbeat_reply(message)
        except ProtocolError as exc:
            check_error(exc)
        else:
            if pong is not None and type(pong) is not bytes:
                raise Finding(f"encode_heartbeat_reply returned {type(pong).__name__}")


_SIZED = (bytes, bytearray, str, memoryview)
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.deque)


def retained_size(obj: object, depth: int = 4) -> int:
    """A rough measure of the state reachable from ``obj``'s attributes: bytes held plus one
    per container element, ``depth`` levels down (classes, functions, enums and modules
    are shared, not per connection, and are skipped)."""
    seen: set[int] = set()

    def walk(value: object, level: int) -> int:
        if id(value) in seen or level < 0:
            return 0
        seen.add(id(value))
        if isinstance(value, _SIZED):
            return len(value)
        if isinstance(value, (type, enum.Enum)) or callable(value):
            return 0
        if isinstance(value, dict):
            return len(value) + sum(
                walk(k, level - 1) + walk(v, level - 1) for k, v in value.items()
            )
        if isinstance(value, _CONTAINERS):
            return len(value) + sum(walk(item, level - 1) for item in value)
        total = 0
        names: list[str] = list(getattr(value, "__dict__", {}))
        for klass in type(value).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            names += [slots] if isinstance(slots, str) else list(slots)
        for name in names:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                attr = getattr(value, name)
            except AttributeError:
                continue
            total += walk(attr, level - 1)
        return total

    return walk(obj, depth)

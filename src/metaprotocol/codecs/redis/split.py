"""Splitting multi-key Redis commands per target and merging the answers (the codec's
``split`` hook, see core/codec.py ``SplitsRequests``).

- ``MGET``, ``MSET``, ``DEL``, ``UNLINK``, ``EXISTS``, ``TOUCH`` whose keys land on several
  targets become one command per target, with that target's keys in the client's order;
  the answers merge into what one server would have said: ``MGET`` an array in the
  client's key order, ``MSET`` ``+OK`` when every part said ``+OK``, the others the sum of
  the parts' integers (keys.py ``SPLITS``).
- Any other multi-key command (keys.py ``KEY_SPECS``: ``MSETNX``, ``RENAME``,
  ``SINTERSTORE``, ``EVAL`` with keys...) whose keys span targets is refused with
  Redis Cluster's ``-CROSSSLOT`` error: it is atomic, or its keys feed one another.
- A command whose keys all land on one target goes whole. When its ``key`` property is
  not its first key (``EVAL script 1 k``, ``BITOP AND dest k``, ``XREAD ... STREAMS k``),
  it still goes whole, but as a one-part fan-out routed by its first real key.
- Errors merge simply: the first part (in part order) that failed decides the answer, a
  ``PartFailed`` through ``encode_error``, an upstream error reply as it came; a part's
  answer of an unexpected shape is a ``bad response from upstream`` error.

A RESP3 client's parts go out on RESP3 connections like its other requests, so the
elements of their answers are copied into the merged array as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Final

from metaprotocol.codecs.redis.keys import KEY_SPECS, SPLITS, Merge, arguments_of, key_positions
from metaprotocol.codecs.redis.reply import ReplyDecoder
from metaprotocol.codecs.redis.request import multibulk
from metaprotocol.core.codec import FanOut, PartFailed
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["CROSSSLOT_DETAIL", "CROSSSLOT_REPLY", "ErrorReply", "split_request"]

CROSSSLOT_DETAIL: Final = "Keys in request don't hash to the same slot"
"""The ``ProtocolError`` detail for a command that cannot be split; answered with
:data:`CROSSSLOT_REPLY` (redis-server's own words, src/cluster.c)."""
CROSSSLOT_REPLY: Final = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"

ErrorReply = Callable[[Message | None, ErrorType, str], bytes | None]
"""The codec's ``encode_error``."""

_OK_REPLY: Final = b"+OK\r\n"
_MAX_ELEMENTS: Final = 1 << 30
_MAX_DEPTH: Final = 64


def split_request(
    request: Message,
    target: Callable[[Mapping[str, str]], Hashable],
    encode_error: ErrorReply,
) -> FanOut | None:
    """The ``split`` hook of the downstream Redis codec (see the module docstring)."""
    command = request.properties.get("command", "")
    spec = KEY_SPECS.get(command)
    if spec is None or request.type is not MessageType.REQUEST or request.count != 1:
        return None
    arguments = arguments_of(request)
    positions = key_positions(spec, arguments)
    if not positions:
        return None
    groups: dict[Hashable, list[int]] = {}  # target -> indexes into positions
    for index, position in enumerate(positions):
        key = arguments[position].decode("utf-8", "surrogateescape")
        groups.setdefault(target({"command": command, "key": key}), []).append(index)
    if len(groups) == 1:
        if positions[0] == 1:
            return None  # the request's own key is its first key: it goes there anyway
        (where,) = groups
        if target(request.properties) == where:
            return None
        first = arguments[positions[0]].decode("utf-8", "surrogateescape")
        data = request.codec_data  # an inline command goes on as its RESP array
        frame = data if isinstance(data, bytes) else request.frame
        return FanOut((_part(frame, command, first),), _Passthrough(request, encode_error))
    how = SPLITS.get(command)
    if how is None:
        raise ProtocolError(CROSSSLOT_DETAIL, ErrorType.BAD_REQUEST, fatal=False, request=request)
    parts = []
    slots: list[list[int]] = []  # per part: the client's key index of each of its keys
    name = arguments[0]
    for indexes in groups.values():
        sub = [name]
        for index in indexes:
            position = positions[index]
            sub.append(arguments[position])
            if how is Merge.ALL_OK:
                sub.append(arguments[position + 1])  # MSET's value
        key = arguments[positions[indexes[0]]].decode("utf-8", "surrogateescape")
        parts.append(_part(multibulk(sub), command, key))
        slots.append(indexes)
    return FanOut(tuple(parts), _Merger(request, how, slots, len(positions), encode_error))


def _part(frame: bytes, command: str, key: str) -> Message:
    return Message(MessageType.REQUEST, frame, None, {"command": command, "key": key},
                   ResponseStatus.OK, None, 0, len(frame))  # fmt: skip


class _Failure(Exception):
    """Internal: the merged answer is this error reply."""

    def __init__(self, reply: bytes) -> None:
        super().__init__()
        self.reply = reply


class _Passthrough:
    """The merge of a one-part fan-out: the part's answer is the client's."""

    __slots__ = ("encode_error", "request")

    def __init__(self, request: Message, encode_error: ErrorReply) -> None:
        self.request = request
        self.encode_error = encode_error

    def __call__(self, outcomes: Sequence[Message | PartFailed]) -> bytes:
        (outcome,) = outcomes
        if isinstance(outcome, PartFailed):
            return _error(self.encode_error, self.request, outcome.error, outcome.detail)
        return outcome.frame


class _Merger:
    """The merge of a split command's parts (``Merge`` says how)."""

    __slots__ = ("encode_error", "how", "keys", "request", "slots")

    def __init__(
        self,
        request: Message,
        how: Merge,
        slots: list[list[int]],
        keys: int,
        encode_error: ErrorReply,
    ) -> None:
        self.request = request
        self.how = how
        self.slots = slots
        self.keys = keys
        self.encode_error = encode_error

    def __call__(self, outcomes: Sequence[Message | PartFailed]) -> bytes:
        if len(outcomes) != len(self.slots):
            raise ValueError(f"{len(outcomes)} outcomes for {len(self.slots)} parts")
        try:
            frames = [self._answer(outcome) for outcome in outcomes]
            if self.how is Merge.VALUES:
                return self._values(frames)
            if self.how is Merge.ALL_OK:
                for frame in frames:
                    if frame != _OK_REPLY:
                        raise self._bad(f"MSET answered {frame[:40]!r}")
                return _OK_REPLY
            return b":%d\r\n" % sum(self._integer(frame) for frame in frames)
        except _Failure as failure:
            return failure.reply

    def _answer(self, outcome: Message | PartFailed) -> bytes:
        if isinstance(outcome, PartFailed):
            reply = _error(self.encode_error, self.request, outcome.error, outcome.detail)
            raise _Failure(reply)
        if outcome.status is ResponseStatus.ERROR:
            raise _Failure(outcome.frame)
        return outcome.frame

    def _values(self, frames: list[bytes]) -> bytes:
        merged: list[bytes] = [b""] * self.keys
        for frame, indexes in zip(frames, self.slots, strict=True):
            elements = _elements(frame)
            if elements is None or len(elements) != len(indexes):
                raise self._bad(f"MGET of {len(indexes)} keys answered {frame[:40]!r}")
            for index, element in zip(indexes, elements, strict=True):
                merged[index] = element
        return b"*%d\r\n%s" % (self.keys, b"".join(merged))

    def _integer(self, frame: bytes) -> int:
        digits = frame[1:-2]
        magnitude = digits[1:] if digits[:1] == b"-" else digits
        if frame[:1] != b":" or frame[-2:] != b"\r\n" or not magnitude.isdigit():
            raise self._bad(f"expected an integer, got {frame[:40]!r}")
        return int(digits)

    def _bad(self, detail: str) -> _Failure:
        return _Failure(_error(self.encode_error, self.request, ErrorType.BAD_RESPONSE, detail))


def _error(encode_error: ErrorReply, request: Message, error: ErrorType, detail: str) -> bytes:
    reply = encode_error(request, error, detail)
    if reply is None:  # the Redis codec always has an answer
        raise ValueError(f"no error reply for {error}")
    return reply


def _elements(frame: bytes) -> list[bytes] | None:
    """The elements of an array reply, each as its own bytes; None if not an array.

    ``frame`` is one whole reply the upstream decoder framed already. MGET's elements are
    bulk strings and RESP2 nils: those are sliced out here in place (a few bytes
    operations each); any other kind (a RESP3 null, a nested reply) goes through a
    ``ReplyDecoder``, which costs a parse and a copy of the rest of the frame."""
    if frame[:1] != b"*":
        return None
    eol = frame.find(b"\r\n")
    count_text = frame[1:eol]
    if eol < 0 or not count_text.isdigit():
        return None
    size = len(frame)
    pos = eol + 2
    elements = []
    for _ in range(int(count_text)):
        end = -1
        if frame[pos : pos + 1] == b"$":
            eol = frame.find(b"\r\n", pos)
            if eol < 0:
                return None
            line = frame[pos + 1 : eol]
            if line == b"-1":
                end = eol + 2
            elif line.isdigit():
                end = eol + 4 + int(line)
                if end > size or frame[end - 2 : end] != b"\r\n":
                    return None
        if end < 0:
            end = _decoded_end(frame, pos)
            if end < 0:
                return None
        elements.append(frame[pos:end])
        pos = end
    return elements if pos == size else None


def _decoded_end(frame: bytes, pos: int) -> int:
    """Where the reply at ``pos`` in ``frame`` ends, by the reply decoder; -1 if it does
    not decode."""
    buffer = bytearray(frame[pos:])
    decoder = ReplyDecoder(len(buffer) + 1, _MAX_ELEMENTS, _MAX_DEPTH)
    try:
        element = decoder.decode(buffer)
    except ProtocolError:
        return -1
    if element is NEED_DATA:
        return -1
    return len(frame) - len(buffer)

"""Codec conformance kit: checks any codec against the Codec contract of core/codec.py.

Call :func:`check_codec` from a codec's test suite with a few real frames::

    from metaprotocol.testing.conformance import check_codec

    def test_conformance() -> None:
        check_codec(DubboCodec, requests=[REQUEST_FRAME, HEARTBEAT_FRAME], responses=[RESPONSE])

Requests are decoded by a DOWNSTREAM codec and encoded by an UPSTREAM one; responses the
other way round, exactly as the proxy uses them. Before an UPSTREAM codec decodes
``responses[i]`` it has encoded ``requests[i % len(requests)]`` (an HTTP/1.1 codec must know
a HEAD request to frame its response), so list requests and responses as pairs where it
matters. Every check raises ``AssertionError`` with a message naming the check, the frame
(hex) and the seed; each check is also public on its own. ``skip`` names checks to leave out
(see :data:`CHECKS`). Randomness comes from ``random.Random(seed)``: a failure reproduces
with the same seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from metaprotocol.core.codec import Codec, CodecFactory, Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    ProtocolError,
)
from metaprotocol.testing._conformance_support import (
    _Checker,
    _decode_all,
    _decode_one,
    _describe,
    _feed,
    _fuzz_input,
    _label,
    _other,
    _random_chunks,
    _snapshot,
)

__all__ = [
    "CHECKS",
    "CONFORMANCE_MUTATION",
    "ERROR_DETAILS",
    "LONG_ERROR_DETAIL",
    "CodecUnderTest",
    "check_attributes",
    "check_codec",
    "check_error_replies",
    "check_fuzz",
    "check_heartbeats",
    "check_message_size_limit",
    "check_mutation",
    "check_prefixes",
    "check_request_id_rewrite",
    "check_round_trip",
    "check_split_feeding",
]

CONFORMANCE_MUTATION = Mutation(add=(("x-conformance", "yes"),), remove=("x-conformance-gone",))
"""The default mutation :func:`check_mutation` applies when the codec supports mutation: it
adds one key and removes another (which the kit first adds, so the removal shows)."""

LONG_ERROR_DETAIL = ("a long detail \r\n\x00\u00fc " * 6000)[: 100 * 1024]
"""100 KiB of detail, special characters included: longer than any 16-bit length field."""

ERROR_DETAILS = ("detail", "no route for 'a\r\nb' \x00 \u00fc", LONG_ERROR_DETAIL)
"""Details passed to ``encode_error``: a codec must keep its reply well framed for each (it
may shorten a detail its protocol cannot carry, but must not fail or break the framing)."""

CHECKS = (
    "attributes",
    "round_trip",
    "split_feeding",
    "prefixes",
    "fuzz",
    "error_replies",
    "heartbeats",
    "request_id_rewrite",
    "mutation",
    "size_limit",
)
"""Names accepted by ``check_codec(skip=...)``, in the order the checks run."""

_REWRITE_IDS = (1, 7, 0x7FFF_FFFF)
_FULL_PREFIX_LIMIT = 256  # frames up to this size get every prefix checked
_ERROR_TYPES = (MessageType.RESPONSE, MessageType.ERROR)
_REQUEST_LIKE = frozenset({MessageType.REQUEST, MessageType.ONEWAY, MessageType.STREAM_INIT})


class CodecUnderTest:
    """A codec class plus how to build it, and the frames to check it with.

    ``codec(side, pair=i)`` builds a codec ready for ``responses[i]``: as in the proxy, an
    UPSTREAM codec has first encoded the paired request and a DOWNSTREAM codec has first
    decoded it (FIFO protocols such as HTTP/1.1 need that to frame or encode a response).
    """

    def __init__(
        self,
        factory: CodecFactory,
        requests: Sequence[bytes] = (),
        responses: Sequence[bytes] = (),
        options: Mapping[str, Any] | None = None,
        max_message_size: int = 1 << 20,
    ) -> None:
        self.factory = factory
        self.requests = tuple(requests)
        self.responses = tuple(responses)
        self.options: Mapping[str, Any] = dict(options or {})
        self.max_message_size = max_message_size
        self._request_messages: list[Message] | None = None

    def make(self, side: Side, max_message_size: int | None = None) -> Codec:
        """A fresh codec, not primed."""
        size = self.max_message_size if max_message_size is None else max_message_size
        return self.factory(side, dict(self.options), size)

    def codec(
        self, side: Side, *, pair: int = 0, count: int = 1, max_message_size: int | None = None
    ) -> Codec:
        """A fresh codec that has seen requests ``pair .. pair+count-1`` (cycling)."""
        codec = self.make(side, max_message_size)
        if not self.requests:
            return codec
        for index in range(pair, pair + count):
            index %= len(self.requests)
            if side is Side.UPSTREAM:
                codec.encode(self.request_messages()[index])
            else:
                codec.decode(bytearray(self.requests[index]))
        return codec

    def frames(self, side: Side) -> tuple[bytes, ...]:
        """The frames a codec on ``side`` decodes."""
        return self.requests if side is Side.DOWNSTREAM else self.responses

    def decoder(self, side: Side, *, pair: int = 0, count: int = 1) -> Codec:
        """A codec ready to decode ``frames(side)[pair:pair+count]``."""
        return (
            self.codec(side, pair=pair, count=count) if side is Side.UPSTREAM else self.make(side)
        )

    def encoder(self, side: Side, *, pair: int = 0) -> Codec:
        """A codec ready to encode a message decoded from ``frames(side)[pair]``."""
        other = _other(side)
        return self.codec(other, pair=pair) if other is Side.DOWNSTREAM else self.make(other)

    def request_messages(self) -> list[Message]:
        """``requests`` decoded once, in order, by one DOWNSTREAM codec."""
        if self._request_messages is None:
            self._request_messages = _decode_all(
                self.make(Side.DOWNSTREAM), self.requests, "requests"
            )
        return self._request_messages

    def decode_frames(self, side: Side) -> list[Message]:
        """``frames(side)``, each decoded alone by a codec ready for it."""
        return [
            _decode_one(self.decoder(side, pair=i), frame, "decode", f"{_label(side)}[{i}]")
            for i, frame in enumerate(self.frames(side))
        ]


def check_codec(
    factory: CodecFactory,
    *,
    requests: Sequence[bytes] = (),
    responses: Sequence[bytes] = (),
    options: Mapping[str, Any] | None = None,
    max_message_size: int = 1 << 20,
    mutation: Mutation | None = CONFORMANCE_MUTATION,
    seed: int = 0,
    fuzz_iterations: int = 200,
    skip: Collection[str] = (),
    side: Side | None = None,
    frames: Sequence[bytes] = (),
    request_for_error: bytes | None = None,
) -> None:
    """Run every conformance check (minus ``skip``) over ``factory``; AssertionError on failure.

    ``requests`` are frames a client sends, ``responses`` frames a server sends (either may be
    empty). ``side``/``frames`` is a shorthand: ``side=Side.DOWNSTREAM, frames=X`` means
    ``requests=X`` and ``side=Side.UPSTREAM, frames=X`` means ``responses=X``.
    ``request_for_error`` is one more request frame, used only to build error replies.
    ``mutation`` (None to skip) is applied by :func:`check_mutation` when
    ``factory.supports_mutation``.
    """
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check names in skip: {sorted(unknown)}; known: {CHECKS}")
    requests_list = list(requests)
    responses_list = list(responses)
    if frames:
        if side is None:
            raise ValueError(
                "frames= needs side= (DOWNSTREAM for requests, UPSTREAM for responses)"
            )
        (requests_list if side is Side.DOWNSTREAM else responses_list).extend(frames)
    cut = CodecUnderTest(
        factory, tuple(requests_list), tuple(responses_list), options, max_message_size
    )
    error_cut = cut
    if request_for_error is not None:
        error_cut = CodecUnderTest(
            factory, (*cut.requests, request_for_error), cut.responses, options, max_message_size
        )
    steps: list[tuple[str, Callable[[], None]]] = [
        ("attributes", lambda: check_attributes(cut)),
        ("round_trip", lambda: check_round_trip(cut)),
        ("split_feeding", lambda: check_split_feeding(cut, seed=seed)),
        ("prefixes", lambda: check_prefixes(cut, seed=seed)),
        ("fuzz", lambda: check_fuzz(cut, seed=seed, iterations=fuzz_iterations)),
        ("error_replies", lambda: check_error_replies(error_cut)),
        ("heartbeats", lambda: check_heartbeats(cut)),
        ("request_id_rewrite", lambda: check_request_id_rewrite(cut)),
        ("mutation", lambda: check_mutation(cut, mutation)),
        ("size_limit", lambda: check_message_size_limit(cut)),
    ]
    for name, step in steps:
        if name not in skip:
            step()


# --- individual checks -------------------------------------------------------------------


def check_attributes(cut: CodecUnderTest) -> None:
    """The class carries ``name``, ``ordering``, ``supports_mutation``; instances are Codecs."""
    ok = _Checker("attributes")
    factory = cut.factory
    name = getattr(factory, "name", None)
    ok(isinstance(name, str) and name != "", f"name must be a str: {name!r}")
    ordering = getattr(factory, "ordering", None)
    ok(isinstance(ordering, Ordering), f"ordering: {ordering!r}")
    mutation = getattr(factory, "supports_mutation", None)
    ok(isinstance(mutation, bool), f"supports_mutation: {mutation!r}")
    for side in Side:
        codec = cut.make(side)
        ok(isinstance(codec, Codec), f"{side.name} codec is not a Codec")
        result = codec.decode(bytearray())
        ok(result is NEED_DATA, f"decode(empty) gave {result!r}")


def check_round_trip(cut: CodecUnderTest) -> None:
    """Each frame decodes alone to one message consuming exactly its bytes; encode is identity.

    A frame is decoded by a fresh codec of its side; the message is encoded by a codec of the
    other side (as the proxy forwards it) and must come back as ``message.frame`` itself.
    """
    ok = _Checker("round_trip")
    for side in Side:
        for index, frame in enumerate(cut.frames(side)):
            where = f"{_label(side)}[{index}]"
            message = _decode_one(cut.decoder(side, pair=index), frame, "round_trip", where)
            expected = _REQUEST_LIKE if side is Side.UPSTREAM else frozenset(_ERROR_TYPES)
            ok(
                message.type not in expected,
                f"{where} decoded on the {side.name} side as {message.type.name}",
                frame,
            )
            encoder = cut.encoder(side, pair=index)
            for kwargs in ({}, {"mutation": Mutation()}):
                out = encoder.encode(message, **kwargs)  # type: ignore[arg-type]
                ok(
                    out is message.frame,
                    f"{where}: encode(message, {kwargs}) must return message.frame itself "
                    f"(zero-copy pass-through); equal bytes: {out == frame}",
                    frame,
                )
            if message.request_id is not None:
                out = encoder.encode(message, request_id=message.request_id)
                ok(
                    out == frame,
                    f"{where}: encode(message, request_id=<its own id>) changed the bytes",
                    frame,
                )


def check_split_feeding(cut: CodecUnderTest, *, seed: int = 0, splits: int = 8) -> None:
    """The frames concatenated, fed whole, byte at a time and at random splits, decode alike."""
    ok = _Checker("split_feeding")
    rng = random.Random(seed)
    for side in Side:
        frames = cut.frames(side)
        if not frames:
            continue
        stream = b"".join(frames)
        expected = [_snapshot(m) for m in cut.decode_frames(side)]
        chunkings: list[tuple[str, list[bytes]]] = [
            ("whole stream", [stream]),
            ("byte at a time", [stream[i : i + 1] for i in range(len(stream))]),
        ]
        for n in range(splits):
            chunkings.append((f"random split #{n}", _random_chunks(rng, stream)))
        for how, chunks in chunkings:
            codec = cut.decoder(side, count=len(frames))
            got = _feed(codec, chunks, ok, f"{_label(side)} {how} (seed={seed})")
            for position, (want, have) in enumerate(zip(expected, got, strict=False)):
                ok(
                    want == have,
                    f"{_label(side)} {how} (seed={seed}): message {position} differs:\n"
                    f"  alone:  {_describe(want)}\n  stream: {_describe(have)}",
                    frames[position],
                )
            ok(
                len(got) == len(expected),
                f"{_label(side)} {how} (seed={seed}): {len(got)} messages, "
                f"expected {len(expected)}",
            )


def check_prefixes(cut: CodecUnderTest, *, seed: int = 0, sample: int = 64) -> None:
    """Every proper prefix of a frame (a sample for long frames) gives NEED_DATA, no error.

    Each prefix goes to a fresh codec, so codecs that remember how far they already searched
    are checked from a cold start too; the buffer must be left untouched.
    """
    ok = _Checker("prefixes")
    rng = random.Random(seed)
    for side in Side:
        for index, frame in enumerate(cut.frames(side)):
            lengths: Collection[int]
            if len(frame) <= _FULL_PREFIX_LIMIT:
                lengths = range(len(frame))
            else:
                head = set(range(min(64, len(frame))))
                tail = set(range(max(0, len(frame) - 8), len(frame)))
                lengths = sorted(head | tail | set(rng.sample(range(len(frame)), sample)))
            for length in lengths:
                prefix = frame[:length]
                codec = cut.decoder(side, pair=index)
                buffer = bytearray(prefix)
                where = f"{_label(side)}[{index}] prefix of {length}/{len(frame)} bytes"
                try:
                    result = codec.decode(buffer)
                except Exception as exc:
                    raise ok.fail(f"{where} raised {exc!r}", frame) from exc
                ok(result is NEED_DATA, f"{where} gave {result!r}", frame)
                ok(buffer == prefix, f"{where} changed the buffer", frame)


def check_fuzz(cut: CodecUnderTest, *, seed: int = 0, iterations: int = 200) -> None:
    """Random and mutated bytes give messages, NEED_DATA or ProtocolError, and never hang.

    Inputs: random bytes, bit flips, interesting bytes (0x00, 0x7f, 0x80, 0xff) written over a
    frame, truncated frames followed by garbage, duplicated and spliced frames. Each goes
    whole or in random chunks to a fresh codec. Decode calls per input are bounded by
    ``len(input) + chunks + 1``: a returned message must consume bytes equal to its frame,
    NEED_DATA must consume nothing, and a non-fatal ProtocolError must consume the bad bytes.
    """
    rng = random.Random(seed)
    for side in Side:
        frames = cut.frames(side)
        sources = list(frames) or [b""]
        for iteration in range(iterations):
            data, how = _fuzz_input(rng, sources)
            chunks = [data] if iteration % 2 == 0 else _random_chunks(rng, data)
            codec = cut.decoder(side, count=2 * len(frames) + 2)
            where = f"{_label(side)} {how} (seed={seed}, #{iteration})"
            _feed(codec, chunks, _Checker("fuzz"), where, fuzz=True)


def check_error_replies(cut: CodecUnderTest, details: Sequence[str] = ERROR_DETAILS) -> None:
    """``encode_error`` replies decode upstream as exactly one RESPONSE or ERROR message.

    For every ErrorType and detail (by default :data:`ERROR_DETAILS`, one of them 100 KiB
    long), with each decoded request (and with None), the DOWNSTREAM codec's reply must decode
    on a fresh UPSTREAM codec (primed with that request) as one message consuming all its
    bytes; MULTIPLEXED codecs must echo the request id. A decoded request that expects a
    response must get a reply (None is allowed only for None).
    """
    ok = _Checker("error_replies")
    requests: list[Message | None] = [None]
    frames: list[bytes | None] = [None]
    downstream = cut.make(Side.DOWNSTREAM)
    for index, request_frame in enumerate(cut.requests):
        message = _decode_one(downstream, request_frame, "error_replies", f"requests[{index}]")
        if message.expects_response:
            requests.append(message)
            frames.append(request_frame)
    multiplexed = cut.factory.ordering is Ordering.MULTIPLEXED
    for request, frame in zip(requests, frames, strict=True):
        for error in ErrorType:
            for detail in details:
                shown = repr(detail) if len(detail) <= 80 else f"<{len(detail)} characters>"
                where = f"encode_error({'request' if request else 'None'}, {error.name}, {shown})"
                try:
                    reply = downstream.encode_error(request, error, detail)
                except Exception as exc:
                    raise ok.fail(f"{where} raised {exc!r}", frame) from exc
                if reply is None:
                    ok(
                        request is None,
                        f"{where} returned None for a decoded request (skip 'error_replies' "
                        "only if the protocol truly has no error reply)",
                        frame,
                    )
                    continue
                ok(type(reply) is bytes, f"{where}: {type(reply)}")
                # Framing is checked here, not size: the client gets the reply, not a codec
                # with the listener's limit, so a long detail may exceed max_message_size.
                upstream = cut.make(Side.UPSTREAM, max(cut.max_message_size, 2 * len(reply)))
                primer = (
                    request if request is not None else next(iter(cut.request_messages()), None)
                )
                if primer is not None:
                    upstream.encode(primer)
                message = _decode_one(upstream, reply, "error_replies", where)
                ok(
                    message.type in _ERROR_TYPES,
                    f"{where} decoded as {message.type.name}, expected RESPONSE or ERROR",
                    reply,
                )
                if multiplexed and request is not None and request.request_id is not None:
                    ok(
                        message.request_id == request.request_id,
                        f"{where}: reply id {message.request_id} != request id "
                        f"{request.request_id}",
                        reply,
                    )


def check_heartbeats(cut: CodecUnderTest) -> None:
    """A heartbeat reply (when the codec builds one) decodes upstream as one message."""
    ok = _Checker("heartbeats")
    downstream = cut.make(Side.DOWNSTREAM)
    for index, frame in enumerate(cut.requests):
        message = _decode_one(downstream, frame, "heartbeats", f"requests[{index}]")
        if message.type is not MessageType.HEARTBEAT:
            continue
        reply = downstream.encode_heartbeat_reply(message)
        if reply is None:
            continue
        upstream = cut.make(Side.UPSTREAM)
        upstream.encode(message)
        where = f"heartbeat reply to requests[{index}]"
        answer = _decode_one(upstream, reply, "heartbeats", where)
        ok(
            answer.type in (MessageType.HEARTBEAT, MessageType.RESPONSE),
            f"{where} decoded as {answer.type.name}",
            reply,
        )
        if cut.factory.ordering is Ordering.MULTIPLEXED:
            ok(
                answer.request_id == message.request_id,
                f"{where}: id {answer.request_id} != {message.request_id}",
                reply,
            )


def check_request_id_rewrite(cut: CodecUnderTest) -> None:
    """MULTIPLEXED codecs: encode(msg, request_id=X) decodes with id X, all else equal.

    Re-encoding that message with its original id must give the original frame back.
    Other orderings are skipped (they carry no ids to rewrite).
    """
    ok = _Checker("request_id_rewrite")
    if cut.factory.ordering is not Ordering.MULTIPLEXED:
        return
    for side in Side:
        for index, message in enumerate(cut.decode_frames(side)):
            original = message.request_id
            if original is None:
                continue
            for new_id in _REWRITE_IDS:
                where = f"{_label(side)}[{index}] id {original} -> {new_id}"
                out = cut.encoder(side, pair=index).encode(message, request_id=new_id)
                rewritten = _decode_one(
                    cut.decoder(side, pair=index), out, "request_id_rewrite", where
                )
                ok(
                    rewritten.request_id == new_id,
                    f"{where}: decoded id {rewritten.request_id}",
                    out,
                )
                want = _snapshot(message, loose=True)
                have = _snapshot(rewritten, loose=True)
                ok(
                    want == have,
                    f"{where}: message changed:\n  before: {_describe(want)}\n"
                    f"  after:  {_describe(have)}",
                    out,
                )
                back = cut.encoder(side, pair=index).encode(rewritten, request_id=original)
                ok(
                    back == message.frame,
                    f"{where}: rewriting back to {original} did not restore the frame",
                    back,
                )


def check_mutation(cut: CodecUnderTest, mutation: Mutation | None = CONFORMANCE_MUTATION) -> None:
    """Codecs with ``supports_mutation``: a mutated encode decodes with the mutation applied.

    Added keys carry their values, removed keys are gone, every other property, the type and
    the request id are unchanged. A key the mutation removes that a message does not carry
    is first added to it (one encode with only that addition, decoded again), so that a
    codec ignoring ``Mutation.remove`` cannot pass. Codecs without mutation support are
    skipped; a codec that cannot mutate one kind of message (say, a response without
    attachments) raises ``ProtocolError`` from ``encode`` for it, never silently drops the
    mutation.
    """
    ok = _Checker("mutation")
    if mutation is None or not mutation or not cut.factory.supports_mutation:
        return
    added = dict(mutation.add)
    for side in Side:
        for index, original in enumerate(cut.decode_frames(side)):
            if original.type is MessageType.HEARTBEAT:
                continue
            where = f"{_label(side)}[{index}] with {mutation}"
            missing = tuple(k for k in mutation.remove if k not in original.properties)
            try:
                message = _planted(cut, side, index, original, missing)
                out = cut.encoder(side, pair=index).encode(message, mutation=mutation)
            except ProtocolError:
                continue  # the codec cannot mutate this message kind (it says so with an error)
            result = _decode_one(cut.decoder(side, pair=index), out, "mutation", where)
            props = dict(message.properties)
            for key in mutation.remove:
                props.pop(key, None)
            props.update(added)
            kept = sorted(k for k in mutation.remove if k in result.properties)
            ok(not kept, f"{where}: removed keys still there: {kept}", out)
            ok(
                result.properties == props,
                f"{where}: properties\n  want: {props}\n  have: {result.properties}",
                out,
            )
            ok(
                (result.type, result.request_id) == (original.type, original.request_id),
                f"{where}: type/id changed to {result.type.name}/{result.request_id}",
                out,
            )


def _planted(
    cut: CodecUnderTest, side: Side, index: int, message: Message, keys: tuple[str, ...]
) -> Message:
    """``message`` re-encoded with ``keys`` added and decoded again (itself if no keys)."""
    if not keys:
        return message
    where = f"{_label(side)}[{index}] with {keys} added (to remove them next)"
    plant = Mutation(add=tuple((key, "planted") for key in keys))
    out = cut.encoder(side, pair=index).encode(message, mutation=plant)
    planted = _decode_one(cut.decoder(side, pair=index), out, "mutation", where)
    lost = sorted(k for k in keys if planted.properties.get(k) != "planted")
    _Checker("mutation")(not lost, f"{where}: added keys missing: {lost}", out)
    return planted


def check_message_size_limit(cut: CodecUnderTest) -> None:
    """A frame larger than ``max_message_size`` raises ProtocolError(MESSAGE_TOO_LARGE).

    Each frame of 32 bytes or more goes to a codec built with a limit of a quarter of its
    size; fed in one piece it must fail with MESSAGE_TOO_LARGE rather than buffer it.
    """
    ok = _Checker("size_limit")
    for side in Side:
        for index, frame in enumerate(cut.frames(side)):
            if len(frame) < 32:
                continue
            limit = len(frame) // 4
            if side is Side.UPSTREAM:
                codec = cut.codec(side, pair=index, max_message_size=limit)
            else:
                codec = cut.make(side, max_message_size=limit)
            where = f"{_label(side)}[{index}] ({len(frame)} bytes, max_message_size={limit})"
            try:
                result = codec.decode(bytearray(frame))
            except ProtocolError as exc:
                ok(
                    exc.error_type is ErrorType.MESSAGE_TOO_LARGE,
                    f"{where}: ProtocolError with error_type {exc.error_type.name}",
                    frame,
                )
                continue
            except Exception as exc:
                raise ok.fail(f"{where} raised {exc!r}", frame) from exc
            raise ok.fail(f"{where} gave {result!r} instead of an error", frame)

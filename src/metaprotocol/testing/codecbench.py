"""Codec benchmark helper: messages and megabytes per second for decode and encode.

The numbers measure what the proxy does per message on one connection::

    from metaprotocol.testing.codecbench import measure_decode, measure_encode

    print(measure_decode(DubboCodec, Side.DOWNSTREAM, [frame]))        # decode + metadata
    print(measure_encode(DubboCodec, Side.DOWNSTREAM, [frame]))        # pass-through
    print(measure_encode(DubboCodec, Side.DOWNSTREAM, [frame], mutation=Mutation(add=...)))
    print(measure_encode(DubboCodec, Side.DOWNSTREAM, [frame], rewrite_ids=True))

``side`` is always the side that *decodes* ``frames`` (DOWNSTREAM for requests); encodes
are done by a codec of the other side, as the proxy forwards a message. The frames are
concatenated and repeated into batches of about 64 KiB; each batch is copied into a fresh
``bytearray`` (as if just read from a socket) and handled by a fresh codec, so per-connection
state (e.g. an HTTP/1.1 codec's queue of pending requests) stays bounded. Measure requests
on the DOWNSTREAM side: FIFO codecs cannot decode responses without their requests.

Timing uses ``time.thread_time``, the CPU time of the measuring thread: on a machine shared
with other jobs the wall clock mostly measures the scheduler. CPU time still moves with
them (shared caches, a busy sibling hyperthread), so a ``Result`` also has the fastest
batch's rate (``best_msgs_per_s``). Each measurement first runs one untimed batch that also
checks the codec decodes the batch completely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metaprotocol.core.codec import CodecFactory, Ordering, Side
from metaprotocol.core.message import NEED_DATA, Message, Mutation

__all__ = ["BATCH_BYTES", "Result", "measure_decode", "measure_encode"]

BATCH_BYTES = 64 * 1024
"""Approximate size of one decode batch (one socket read's worth of pipelined frames)."""


@dataclass(frozen=True, slots=True)
class Result:
    """Throughput of one measured operation."""

    operation: str
    messages: int
    total_bytes: int
    seconds: float
    batch_messages: int = 0  # messages in one batch
    best_batch_seconds: float = 0.0  # CPU time of the fastest batch

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def best_msgs_per_s(self) -> float:
        """The fastest batch's rate: on a machine shared with other jobs, the closest to
        what the code does on a core of its own (the mean includes time lost to them)."""
        if self.best_batch_seconds <= 0:
            return self.msgs_per_s
        return self.batch_messages / self.best_batch_seconds

    @property
    def mb_per_s(self) -> float:
        """Megabytes (10**6 bytes) of frames processed per second."""
        return self.total_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.operation}: {self.msgs_per_s:,.0f} msgs/s, {self.mb_per_s:,.1f} MB/s"


def measure_decode(
    factory: CodecFactory,
    side: Side,
    frames: Sequence[bytes],
    *,
    options: Mapping[str, Any] | None = None,
    max_message_size: int = 1 << 20,
    seconds: float = 1.0,
) -> Result:
    """Decode ``frames`` (pipelined, in batches) with ``side`` codecs for about ``seconds``."""
    batch, count = _batch(frames)
    opts = dict(options or {})

    def one_batch() -> None:
        decode = factory(side, opts, max_message_size).decode
        buffer = bytearray(batch)
        while buffer:
            if decode(buffer) is NEED_DATA:
                raise ValueError(
                    f"{factory.name}: {len(buffer)} bytes left undecoded (NEED_DATA) in a batch "
                    "of whole frames"
                )

    _check_decodes(factory, side, opts, max_message_size, batch, count)
    one_batch()  # warm-up, untimed
    batches, elapsed, best = _run(one_batch, seconds)
    return Result("decode", batches * count, batches * len(batch), elapsed, count, best)


def measure_encode(
    factory: CodecFactory,
    side: Side,
    frames: Sequence[bytes],
    *,
    mutation: Mutation | None = None,
    rewrite_ids: bool = False,
    options: Mapping[str, Any] | None = None,
    max_message_size: int = 1 << 20,
    seconds: float = 1.0,
) -> Result:
    """Encode messages decoded from ``frames`` with codecs of the other side.

    With neither ``mutation`` nor ``rewrite_ids`` this is the pass-through fast path.
    ``rewrite_ids`` gives every message a new request id (MULTIPLEXED codecs only), as the
    proxy does per upstream connection. MB/s counts the encoded output bytes.
    """
    if rewrite_ids and factory.ordering is not Ordering.MULTIPLEXED:
        raise ValueError(f"{factory.name} is {factory.ordering.name}: it has no ids to rewrite")
    batch, count = _batch(frames)
    opts = dict(options or {})
    messages = _check_decodes(factory, side, opts, max_message_size, batch, count)
    ids = list(range(1, count + 1))
    encoder_side = Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM

    def one_batch() -> int:
        encode = factory(encoder_side, opts, max_message_size).encode
        size = 0
        if rewrite_ids:
            for message, new_id in zip(messages, ids, strict=True):
                size += len(encode(message, request_id=new_id, mutation=mutation))
        elif mutation:
            for message in messages:
                size += len(encode(message, mutation=mutation))
        else:
            for message in messages:
                size += len(encode(message))
        return size

    batch_bytes = one_batch()  # warm-up, untimed
    batches, elapsed, best = _run(one_batch, seconds)
    operation = "encode " + (
        "id rewrite" if rewrite_ids else "mutated" if mutation else "pass-through"
    )
    return Result(operation, batches * count, batches * batch_bytes, elapsed, count, best)


def _batch(frames: Sequence[bytes]) -> tuple[bytes, int]:
    if not frames or not all(frames):
        raise ValueError("frames must be a non-empty list of non-empty frames")
    unit = b"".join(frames)
    repeat = max(1, BATCH_BYTES // len(unit))
    return unit * repeat, len(frames) * repeat


def _check_decodes(
    factory: CodecFactory,
    side: Side,
    options: dict[str, Any],
    max_message_size: int,
    batch: bytes,
    count: int,
) -> list[Message]:
    codec = factory(side, options, max_message_size)
    buffer = bytearray(batch)
    messages: list[Message] = []
    while buffer:
        result = codec.decode(buffer)
        if result is NEED_DATA:
            raise ValueError(f"{factory.name}: the frames do not decode completely")
        assert isinstance(result, Message)
        messages.append(result)
    if len(messages) != count:
        raise ValueError(f"{factory.name}: {len(messages)} messages decoded, expected {count}")
    return messages


def _run(one_batch: Callable[[], object], seconds: float) -> tuple[int, float, float]:
    """Call ``one_batch`` until it has used ``seconds`` of CPU time (at least once);
    (calls, CPU seconds, CPU seconds of the fastest call)."""
    clock = time.thread_time
    batches = 0
    best = float("inf")
    start = last = clock()
    while True:
        one_batch()
        batches += 1
        now = clock()
        best = min(best, now - last)
        last = now
        elapsed = now - start
        if elapsed >= seconds:
            return batches, elapsed, best

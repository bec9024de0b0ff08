"""The Redis codec's split and merge with real servers, before the engine uses them: the
parts of multi-key commands go to real shards (three standalone servers, or the slot owners
of a real Redis Cluster) and the merged answers are what a single server would say."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable, Hashable, Mapping

import pytest

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.cluster import SlotMap
from metaprotocol.codecs.redis.request import multibulk
from metaprotocol.codecs.redis.slots import hash_tag, key_slot
from metaprotocol.codecs.redis.values import RespValue, read_value
from metaprotocol.core.codec import FanOut, Side
from metaprotocol.core.config import Endpoint
from metaprotocol.core.message import NEED_DATA, Message, ProtocolError
from metaprotocol.discovery.redis_cluster import fetch_slot_map
from tests.e2e.redis_clusters import RedisCluster
from tests.e2e.servers import DEADLINE

MAX = 1 << 24
Target = Callable[[Mapping[str, str]], Hashable]


class Shards:
    """One connection per shard port, through the codec's upstream side."""

    def __init__(self, ports: tuple[int, ...], resp3: bool) -> None:
        self.ports = ports
        self.resp3 = resp3

    def ask(self, port: int, frame: bytes) -> Message:
        codec = RedisCodec(Side.UPSTREAM, {}, MAX)
        opening = codec.preamble("resp3") if self.resp3 else b""
        buffer = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(opening + frame)
            while True:
                answer = codec.decode(buffer)
                if answer is not NEED_DATA:
                    return answer
                chunk = sock.recv(65536)
                assert chunk
                buffer += chunk


def client(resp3: bool) -> RedisCodec:
    codec = RedisCodec(Side.DOWNSTREAM, {}, MAX)
    if resp3:
        hello = codec.decode(bytearray(multibulk([b"HELLO", b"3"])))
        assert isinstance(hello, Message)
        codec.encode_heartbeat_reply(hello)
    return codec


def run(shards: Shards, route: dict[Hashable, int], target: Target, words: list[str]) -> RespValue:
    """Decode ``words`` as a client request, split it, send each part where ``route``
    says, merge: the value the client would get (a whole request goes where its key goes)."""
    codec = client(shards.resp3)
    request = codec.decode(bytearray(multibulk([w.encode() for w in words])))
    assert isinstance(request, Message)
    try:
        fan = codec.split(request, target)
    except ProtocolError as exc:
        reply = codec.encode_error(exc.request, exc.error_type, str(exc))
        assert reply is not None
        return read_value(reply)
    if fan is None:
        where = target(request.properties)
        return read_value(shards.ask(route[where], request.frame).frame)
    assert isinstance(fan, FanOut)
    outcomes = [shards.ask(route[target(p.properties)], p.frame) for p in fan.parts]
    return read_value(fan.merge(outcomes))


def by_ring(count: int) -> Target:
    def target(properties: Mapping[str, str]) -> Hashable:
        key = hash_tag(properties.get("key", ""))
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count

    return target


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_three_plain_shards(redis_shards_3: tuple[int, ...], resp3: bool) -> None:
    shards = Shards(redis_shards_3, resp3)
    route: dict[Hashable, int] = dict(enumerate(redis_shards_3))
    target = by_ring(3)
    prefix = f"split:{int(resp3)}:"
    keys = [f"{prefix}{i}" for i in range(300)]
    words = ["MSET"]
    for key in keys:
        words += [key, f"v{key}"]
    assert run(shards, route, target, words) == "OK"
    # Every key is where single-key routing looks for it.
    for key in keys:
        assert run(shards, route, target, ["GET", key]) == f"v{key}".encode()
    used = {target({"key": key}) for key in keys}
    assert used == {0, 1, 2}
    asked = [keys[5], f"{prefix}missing", keys[0], keys[299], keys[5]]
    expected = [f"v{keys[5]}".encode(), None, f"v{keys[0]}".encode(),
                f"v{keys[299]}".encode(), f"v{keys[5]}".encode()]  # fmt: skip
    assert run(shards, route, target, ["MGET", *asked]) == expected
    assert run(shards, route, target, ["EXISTS", *asked]) == 4
    assert run(shards, route, target, ["TOUCH", *keys[:10]]) == 10
    assert run(shards, route, target, ["DEL", *keys[:100], f"{prefix}missing"]) == 100
    assert run(shards, route, target, ["UNLINK", *keys[100:]]) == 200
    assert run(shards, route, target, ["EXISTS", *keys]) == 0
    # Hash-tagged keys share a shard: commands that cannot be split still work on them.
    tagged = [f"{{{prefix}user}}:{i}" for i in range(20)]
    pairs = [word for key in tagged for word in (key, "1")]
    assert run(shards, route, target, ["MSETNX", *pairs]) == 1
    apart = next(key for key in keys if target({"key": key}) != target({"key": keys[0]}))
    assert run(shards, route, target, ["MSETNX", keys[0], "1", apart, "2"]) == (
        read_value(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
    )
    assert run(shards, route, target, ["DEL", *tagged]) == 20


def test_a_real_redis_cluster_by_slot(redis_cluster_3: RedisCluster) -> None:
    slot_map: SlotMap = fetch_slot_map([Endpoint("127.0.0.1", p) for p in redis_cluster_3.ports])
    shards = Shards(redis_cluster_3.ports, resp3=False)
    route: dict[Hashable, int] = {}
    for slot in range(16384):
        owner = slot_map.primary(slot)
        assert owner is not None
        route[slot] = owner.port

    def target(properties: Mapping[str, str]) -> Hashable:
        # A cluster refuses multi-key commands across slots even on one node: split per slot.
        return key_slot(properties.get("key", ""))

    keys = [f"cluster-split:{i}" for i in range(100)]
    words = ["MSET"]
    for key in keys:
        words += [key, key.upper()]
    assert run(shards, route, target, words) == "OK"
    assert run(shards, route, target, ["MGET", *keys, "cluster-split:none"]) == [
        *(key.upper().encode() for key in keys),
        None,
    ]
    assert run(shards, route, target, ["DEL", *keys]) == 100

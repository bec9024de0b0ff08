"""Fan-out in the core (docs/architecture.md, "Fan-out and hash tags"): a request the codec
splits (Redis MGET over key-prefix routes here) becomes one child request per target, each
routed, sent, timed out and retried on its own; the client gets exactly one answer, the
codec's merge, in its place in the reply order; nothing is left behind."""

from __future__ import annotations

from metaprotocol.codecs.redis.split import CROSSSLOT_REPLY
from metaprotocol.core.config import (
    ClusterConfig,
    Endpoint,
    RetryPolicy,
    RouteAction,
    RouteConfig,
)
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    SlotMapChanged,
    UpstreamConnected,
)
from metaprotocol.core.lifecycle import RequestState
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing.playbook import Playbook

from .fanout_helpers import (
    NIL,
    SESSIONS_UP,
    array,
    cluster_playbook,
    hashed_route,
    ring_shards,
    sessions_route,
    slot_map,
)
from .fanout_helpers import A as NODE_A
from .fanout_helpers import B as NODE_B
from .fanout_helpers import C as NODE_C
from .helpers import UP, bulk, cmd, config

TIMEOUT = b"-ERR upstream request timeout: request timed out\r\n"
RESET = b"-ERR upstream connection reset: upstream connection closed\r\n"


def by_prefix(
    retries: RetryPolicy | None = None, observe: bool = False, **listener: object
) -> Proxy:
    """Keys starting with ``session:`` go to the ``sessions`` cluster, the rest to ``main``."""
    routes = (
        sessions_route(retries=retries),
        RouteConfig("default", RouteAction(cluster="main", retries=retries)),
    )
    clusters = (
        ClusterConfig("main", (Endpoint(*UP),)),
        ClusterConfig("sessions", (Endpoint(*SESSIONS_UP),)),
    )
    cfg = config(routes, clusters, codec="redis", **listener)  # type: ignore[arg-type]
    return Proxy(cfg, now=0.0, observe=observe)


def split_sent(pb: Playbook, data: bytes, main_part: bytes, sessions_part: bytes) -> None:
    """Client 1 sent ``data``; both upstreams opened, connected and given their parts."""
    pb >> Accepted(1, "main") >> DataReceived(1, data)
    pb << OpenUpstream(-1, *UP) << OpenUpstream(-2, *SESSIONS_UP)
    pb >> UpstreamConnected(-1) >> UpstreamConnected(-2)
    pb << Write(-1, main_part) << Write(-2, sessions_part)


def test_all_parts_answered_merge_in_the_clients_key_order() -> None:
    proxy = by_prefix()
    pb = Playbook(proxy)
    mget = cmd("MGET", "a", "session:b", "c", "session:d")
    split_sent(pb, mget, cmd("MGET", "a", "c"), cmd("MGET", "session:b", "session:d"))
    pb >> DataReceived(-2, array(bulk("B"), NIL))
    pb << None  # the other part is still owed
    pb >> DataReceived(-1, array(bulk("A"), bulk("C")))
    pb << Write(1, array(bulk("A"), bulk("B"), bulk("C"), NIL))
    counters = proxy.runtime.listeners["main"].counters
    assert (counters.request, counters.request_split, counters.active_requests) == (1, 1, 0)
    # One request, one answer: the parts' responses are counted once, as the merge.
    assert (counters.response, counters.response_success, counters.local_response_error) == (
        1,
        1,
        0,
    )
    assert proxy.runtime.clusters["main"].outcomes == {"ok": 1}
    assert proxy.runtime.clusters["sessions"].outcomes == {"ok": 1}
    pb >> Closed(1) >> Closed(-1) >> Closed(-2)
    pb.assert_clean()


def test_counts_sum_and_mset_says_ok_once() -> None:
    pb = Playbook(by_prefix())
    split_sent(pb, cmd("DEL", "a", "session:b", "c"), cmd("DEL", "a", "c"), cmd("DEL", "session:b"))
    pb >> DataReceived(-1, b":2\r\n") >> DataReceived(-2, b":1\r\n")
    pb << Write(1, b":3\r\n")
    mset = cmd("MSET", "a", "1", "session:b", "2")
    pb >> DataReceived(1, mset)
    pb << Write(-1, cmd("MSET", "a", "1")) << Write(-2, cmd("MSET", "session:b", "2"))
    pb >> DataReceived(-2, b"+OK\r\n") >> DataReceived(-1, b"+OK\r\n")
    pb << Write(1, b"+OK\r\n")
    pb >> Closed(1) >> Closed(-1) >> Closed(-2)
    pb.assert_clean()


def test_one_part_timing_out_is_the_one_answer() -> None:
    proxy = by_prefix(request_timeout=1.0)
    pb = Playbook(proxy)
    split_sent(pb, cmd("MGET", "a", "session:b"), cmd("MGET", "a"), cmd("MGET", "session:b"))
    pb >> DataReceived(-2, array(bulk("B")))
    pb << None
    pb.tick(1.5)
    # The timed-out part's connection is reset (its late answer would hold later ones).
    pb << CloseConnection(-1, flush=False) << Write(1, TIMEOUT)
    assert proxy.runtime.clusters["main"].outcomes == {"local_error": 1}
    pb >> Closed(1) >> Closed(-2)
    pb.assert_clean()


def test_one_parts_upstream_reset_is_the_one_answer() -> None:
    proxy = by_prefix()
    pb = Playbook(proxy)
    split_sent(pb, cmd("MGET", "a", "session:b"), cmd("MGET", "a"), cmd("MGET", "session:b"))
    pb >> Closed(-1)
    pb << None  # the other part is still owed: one answer, once both have an outcome
    pb >> DataReceived(-2, array(bulk("B")))
    pb << Write(1, RESET)
    counters = proxy.runtime.listeners["main"].counters
    assert (counters.response, counters.local_response_error) == (0, 1)
    pb >> Closed(1) >> Closed(-2)
    pb.assert_clean()


def test_a_part_is_retried_on_its_own() -> None:
    proxy = by_prefix(retries=RetryPolicy(attempts=1))
    pb = Playbook(proxy)
    split_sent(pb, cmd("MGET", "a", "session:b"), cmd("MGET", "a"), cmd("MGET", "session:b"))
    pb >> DataReceived(-2, array(bulk("B")))
    pb >> Closed(-1)
    pb << OpenUpstream(-3, *UP)  # only the reset part goes again
    pb >> UpstreamConnected(-3)
    pb << Write(-3, cmd("MGET", "a"))
    pb >> DataReceived(-3, array(bulk("A")))
    pb << Write(1, array(bulk("A"), bulk("B")))
    assert proxy.runtime.clusters["main"].counters.upstream_rq_retry == 1
    assert proxy.runtime.clusters["sessions"].counters.upstream_rq_retry == 0
    pb >> Closed(1) >> Closed(-2) >> Closed(-3)
    pb.assert_clean()


def test_pipelined_order_is_kept_around_a_fan_out() -> None:
    """GET x, MGET a session:b, GET y: the MGET is never merged into the GETs' run (its keys
    go two ways), and its merged answer keeps its place between theirs."""
    pb = Playbook(by_prefix())  # observe=False: pipelined runs merge
    pipeline = cmd("GET", "x") + cmd("MGET", "a", "session:b") + cmd("GET", "y")
    main_writes = cmd("GET", "x") + cmd("MGET", "a") + cmd("GET", "y")
    split_sent(pb, pipeline, main_writes, cmd("MGET", "session:b"))
    pb >> DataReceived(-1, bulk("X") + array(bulk("A")) + bulk("Y"))
    pb << Write(1, bulk("X"))  # Y waits behind the MGET, which waits for session:b
    pb >> DataReceived(-2, array(bulk("B")))
    pb << Write(1, array(bulk("A"), bulk("B")) + bulk("Y"))
    pb >> Closed(1) >> Closed(-1) >> Closed(-2)
    pb.assert_clean()


def test_a_multi_key_command_is_not_carried_by_its_first_key() -> None:
    """Behind a GET of the main cluster, an MGET whose first key is main's too would have
    joined the GET's merged run and taken session:b there."""
    pb = Playbook(by_prefix())
    pipeline = cmd("GET", "x") + cmd("MGET", "a", "session:b")
    split_sent(pb, pipeline, cmd("GET", "x") + cmd("MGET", "a"), cmd("MGET", "session:b"))
    pb >> DataReceived(-1, bulk("X") + array(NIL)) >> DataReceived(-2, array(bulk("B")))
    pb << Write(1, bulk("X")) << Write(1, array(NIL, bulk("B")))
    pb >> Closed(1) >> Closed(-1) >> Closed(-2)
    pb.assert_clean()


def test_the_client_closing_mid_fan_out_ends_every_part() -> None:
    proxy = by_prefix()
    pb = Playbook(proxy)
    split_sent(pb, cmd("MGET", "a", "session:b"), cmd("MGET", "a"), cmd("MGET", "session:b"))
    ds = proxy.downstreams[1]
    (parent,) = ds.active
    assert parent.state is RequestState.SPLIT and parent.split is not None
    children = parent.split.children
    assert [c.state for c in children] == [RequestState.SENT, RequestState.SENT]
    pb >> DataReceived(-2, array(bulk("B")))
    pb >> Closed(1)
    # Nothing else waits on the main connection: it closes rather than keep a late answer.
    pb << CloseConnection(-1, flush=False)
    states = (parent.state, *(c.state for c in children))
    assert states == (RequestState.ABANDONED, RequestState.ABANDONED, RequestState.ANSWERED)
    pb >> Closed(-2)
    pb.assert_clean()


def test_keys_on_one_target_go_whole_and_msetnx_across_targets_is_refused() -> None:
    pb = Playbook(by_prefix())
    pb >> Accepted(1, "main") >> DataReceived(1, cmd("MGET", "a", "b"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("MGET", "a", "b"))
    pb >> DataReceived(-1, array(bulk("A"), NIL))
    pb << Write(1, array(bulk("A"), NIL))
    pb >> DataReceived(1, cmd("MSETNX", "a", "1", "session:b", "2"))
    pb << Write(1, CROSSSLOT_REPLY)
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_a_part_without_a_route_fails_the_whole_answer() -> None:
    proxy = Proxy(config((sessions_route("main"),), codec="redis"), now=0.0, observe=False)
    pb = Playbook(proxy)
    pb >> Accepted(1, "main") >> DataReceived(1, cmd("MGET", "session:a", "other"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("MGET", "session:a"))
    pb >> DataReceived(-1, array(bulk("A")))
    reply = pb.take()
    assert isinstance(reply, Write) and reply.conn == 1 and reply.data.startswith(b"-ERR")
    assert b"no route" in reply.data
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def sharded() -> Proxy:
    """Three shards behind ``ring_hash`` with ``hash_policy: [key]``."""
    cfg = config((hashed_route(),), (ring_shards(),), codec="redis")
    return Proxy(cfg, now=0.0, observe=False)


def shard_of(proxy: Proxy, key: str) -> str:
    """The shard a GET of ``key`` goes to (on a fresh client connection)."""
    conn = 1000 + len(proxy.downstreams)
    outputs = proxy.handle(Accepted(conn, "main"), 0.0)
    outputs = proxy.handle(DataReceived(conn, cmd("GET", key)), 0.0)
    (up,) = (o for o in outputs if isinstance(o, OpenUpstream | Write) and o.conn < 0)
    target = proxy.upstreams[up.conn].pool.endpoint.label
    proxy.handle(Closed(conn), 0.0)
    return target


def test_each_key_of_a_split_goes_where_a_get_of_it_goes() -> None:
    proxy = sharded()
    keys = [f"key:{i}" for i in range(40)]
    where = {key: shard_of(proxy, key) for key in keys}
    assert len(set(where.values())) == 3
    proxy.handle(Accepted(1, "main"), 0.0)
    outputs = proxy.handle(DataReceived(1, cmd("MGET", *keys)), 0.0)
    opened = {o.conn: f"{o.host}:{o.port}" for o in outputs if isinstance(o, OpenUpstream)}
    for conn in opened:
        outputs += proxy.handle(UpstreamConnected(conn), 0.0)
    sent = {opened[o.conn]: o.data for o in outputs if isinstance(o, Write) and o.conn < 0}
    assert sent.keys() == set(where.values())
    for key, shard in where.items():
        assert b"\r\n%s\r\n" % key.encode() in sent[shard]


def test_hash_tagged_keys_share_a_shard_and_go_whole() -> None:
    proxy = sharded()
    tagged = [f"{{user:{n}}}:{field}" for n in range(5) for field in ("cart", "name", "seen")]
    shards = {
        n: {shard_of(proxy, k) for k in tagged if k.startswith(f"{{user:{n}}}")} for n in range(5)
    }
    assert all(len(s) == 1 for s in shards.values())
    assert len({next(iter(s)) for s in shards.values()}) > 1  # the tags spread, keys do not
    keys = [k for k in tagged if k.startswith("{user:3}")]
    pb = Playbook(proxy)
    pb >> Accepted(1, "main") >> DataReceived(1, cmd("MGET", *keys))
    opened = pb.take()
    assert isinstance(opened, OpenUpstream)
    assert f"{opened.host}:{opened.port}" == next(iter(shards[3]))
    pb >> UpstreamConnected(opened.conn)
    pb << Write(opened.conn, cmd("MGET", *keys))  # one shard: the command goes whole
    assert proxy.runtime.listeners["main"].counters.request_split == 0


def test_a_redis_cluster_splits_per_slot_not_per_node() -> None:
    """Keys "a" (slot 15495, node C), "c" (7365, B), "b" (3300, A) and "bar" (5061, A): four
    slots, so four parts, two of them to node A (redis-server refuses keys of two slots in
    one command even when it owns both)."""
    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("MGET", "a", "b", "c", "bar"))
    opened = {}
    for _ in range(3):
        up = pb.take()
        assert isinstance(up, OpenUpstream)
        opened[(up.host, up.port)] = up.conn
    assert set(opened) == {NODE_A, NODE_B, NODE_C}
    writes: dict[int, bytes] = {}
    for conn in opened.values():
        pb >> UpstreamConnected(conn)
        out = pb.take()
        assert isinstance(out, Write)
        writes[out.conn] = out.data
    assert writes[opened[NODE_A]] == cmd("MGET", "b") + cmd("MGET", "bar")
    assert writes[opened[NODE_B]] == cmd("MGET", "c")
    assert writes[opened[NODE_C]] == cmd("MGET", "a")
    pb >> DataReceived(opened[NODE_C], array(bulk("A")))
    pb >> DataReceived(opened[NODE_B], array(NIL))
    pb << None
    pb >> DataReceived(opened[NODE_A], array(bulk("B")) + array(bulk("BAR")))
    pb << Write(1, array(bulk("A"), bulk("B"), NIL, bulk("BAR")))
    pb >> Closed(1)
    for conn in opened.values():
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_listener_whose_requests_all_go_to_one_place_does_not_ask_the_codec() -> None:
    """Every route to one cluster with a catch-all: no key can land elsewhere, so the router
    skips the codec's ``split`` (a per-request cost); the command goes whole."""
    prefix_to_main = (sessions_route("main"), RouteConfig("default", RouteAction(cluster="main")))
    proxy = Proxy(config(prefix_to_main, codec="redis"), now=0.0)
    assert not proxy.runtime.listeners["main"].splits
    pb = Playbook(proxy)
    mget = cmd("MGET", "a", "session:b")
    pb >> Accepted(1, "main") >> DataReceived(1, mget)
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, mget)
    pb >> DataReceived(-1, array(bulk("A"), NIL))
    pb << Write(1, array(bulk("A"), NIL))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()
    # Two clusters, no catch-all, a hashing cluster with a hash policy, a Redis Cluster:
    # requests may go to several places, so the codec is asked.
    assert by_prefix().runtime.listeners["main"].splits
    only_prefix = Proxy(config(prefix_to_main[:1], codec="redis"), now=0.0)
    assert only_prefix.runtime.listeners["main"].splits
    hashed = (RouteConfig("all", RouteAction(cluster="main", hash_policy=("key",))),)
    ring = (ClusterConfig("main", (Endpoint(*UP), Endpoint(*SESSIONS_UP)), lb_policy="ring_hash"),)
    assert Proxy(config(hashed, ring, codec="redis"), now=0.0).runtime.listeners["main"].splits
    plain = (ClusterConfig("main", (Endpoint(*UP),), lb_policy="round_robin"),)
    assert not Proxy(config(hashed, plain, codec="redis"), now=0.0).runtime.listeners["main"].splits
    assert cluster_playbook().proxy.runtime.listeners["main"].splits

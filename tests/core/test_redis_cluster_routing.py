"""Playbooks for Redis Cluster upstreams (core/slotrouting.py): the slot map event, keys
sent to the node owning their slot, -MOVED (resend to the named node, map updated, a
refresh asked of the adapter), -ASK (ASKING + the command on the named node, the map
unchanged) and replica reads over READONLY connections."""

from __future__ import annotations

from metaprotocol.codecs.redis.cluster import ClusterNode, Shard, SlotMap
from metaprotocol.core.events import (
    Closed,
    DataReceived,
    SlotMapChanged,
    UpstreamConnected,
)
from metaprotocol.core.outputs import OpenUpstream, RefreshSlotMap, Write

from .fanout_helpers import REPLICA_A, A, B, C, cluster_playbook, opens_and_sends, slot_map
from .helpers import bulk, cmd


def test_before_the_slot_map_a_seed_serves_then_each_key_goes_to_its_slots_node() -> None:
    pb = cluster_playbook()
    pb >> DataReceived(1, cmd("GET", "a"))  # no map yet: the seed (a MOVED would follow)
    opens_and_sends(pb, -1, A, cmd("GET", "a"))
    pb >> DataReceived(-1, bulk("1"))
    pb << Write(1, bulk("1"))
    pb >> SlotMapChanged("redis", slot_map())
    pb << None
    pb >> DataReceived(1, cmd("GET", "a"))  # slot 15495: C
    opens_and_sends(pb, -2, C, cmd("GET", "a"))
    pb >> DataReceived(-2, bulk("2"))
    pb << Write(1, bulk("2"))
    pb >> DataReceived(1, cmd("SET", "c", "v"))  # slot 7365: B
    pb << OpenUpstream(-3, *B)
    pb >> DataReceived(1, cmd("GET", "b"))  # slot 3300: A, on the seed's warm connection
    pb << Write(-1, cmd("GET", "b"))
    pb >> UpstreamConnected(-3)
    pb << Write(-3, cmd("SET", "c", "v"))
    pb >> DataReceived(-1, bulk("3"))  # answers wait for the earlier one
    pb << None
    pb >> DataReceived(-3, b"+OK\r\n")
    pb << Write(1, b"+OK\r\n" + bulk("3"))
    labels = {ep.label for ep in pb.proxy.runtime.clusters["redis"].endpoints}
    assert labels == {"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}
    for conn in (1, -1, -2, -3):
        pb >> Closed(conn)
    pb.assert_clean()


def test_moved_resends_to_the_named_node_updates_the_map_and_asks_for_a_refresh() -> None:
    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("GET", "b"))  # the map says A
    opens_and_sends(pb, -1, A, cmd("GET", "b"))
    pb >> DataReceived(-1, b"-MOVED 3300 10.0.0.2:7000\r\n")  # the slot moved to B
    pb << RefreshSlotMap("redis")
    opens_and_sends(pb, -2, B, cmd("GET", "b"))
    pb >> DataReceived(-2, bulk("B"))
    pb << Write(1, bulk("B"))  # the client never saw the MOVED
    pb >> DataReceived(1, cmd("GET", "b"))  # the map now says B for slot 3300
    pb << Write(-2, cmd("GET", "b"))
    pb >> DataReceived(-2, bulk("B"))
    pb << Write(1, bulk("B"))
    pb >> DataReceived(1, cmd("GET", "bar"))  # slot 5061: still A
    pb << Write(-1, cmd("GET", "bar"))
    pb >> DataReceived(-1, bulk("A"))
    pb << Write(1, bulk("A"))
    assert pb.proxy.stats.counter("redis_cluster_moved", (("cluster", "redis"),)) == 1
    for conn in (1, -1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_ask_sends_asking_and_the_command_to_the_named_node_once() -> None:
    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("GET", "b"))
    opens_and_sends(pb, -1, A, cmd("GET", "b"))
    pb >> DataReceived(-1, b"-ASK 3300 10.0.0.3:7000\r\n")  # slot 3300 migrating to C
    pb << OpenUpstream(-2, *C)  # no refresh: the map is unchanged
    pb >> UpstreamConnected(-2)
    pb << Write(-2, cmd("ASKING") + cmd("GET", "b"))
    pb >> DataReceived(-2, b"+OK\r\n")  # ASKING's answer is the proxy's, not the client's
    pb << None
    pb >> DataReceived(-2, bulk("C"))
    pb << Write(1, bulk("C"))
    pb >> DataReceived(1, cmd("GET", "b"))  # the next one goes to A again
    pb << Write(-1, cmd("GET", "b"))
    pb >> DataReceived(-1, bulk("A"))
    pb << Write(1, bulk("A"))
    assert pb.proxy.stats.counter("redis_cluster_ask", (("cluster", "redis"),)) == 1
    for conn in (1, -1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_redirections_are_followed_a_bounded_number_of_times() -> None:
    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("GET", "b"))
    opens_and_sends(pb, -1, A, cmd("GET", "b"))
    pb >> DataReceived(-1, b"-ASK 3300 10.0.0.3:7000\r\n")
    opens_and_sends(pb, -2, C, cmd("ASKING") + cmd("GET", "b"))
    pb >> DataReceived(-2, b"+OK\r\n")
    bounce = b"-ASK 3300 10.0.0.1:7000\r\n"
    for _ in range(2):  # A and C keep sending it to each other
        pb >> DataReceived(-2, bounce)
        pb << Write(-1, cmd("ASKING") + cmd("GET", "b"))
        pb >> DataReceived(-1, b"+OK\r\n" + b"-ASK 3300 10.0.0.3:7000\r\n")
        pb << Write(-2, cmd("ASKING") + cmd("GET", "b"))
        pb >> DataReceived(-2, b"+OK\r\n")
    pb >> DataReceived(-2, bounce)  # the sixth: the client gets it as is
    pb << Write(1, bounce)
    for conn in (1, -1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_replica_preferred_reads_from_a_replica_over_readonly_and_writes_to_the_primary() -> None:
    pb = cluster_playbook("replica_preferred", seed=REPLICA_A)
    pb >> DataReceived(1, cmd("PING"))  # keyless: the seed (a replica), on a plain connection
    opens_and_sends(pb, -1, REPLICA_A, cmd("PING"))
    pb >> DataReceived(-1, b"+PONG\r\n")
    pb << Write(1, b"+PONG\r\n")
    pb >> SlotMapChanged("redis", slot_map(replica=True))
    pb >> DataReceived(1, cmd("GET", "b"))  # a read: A's replica, never on the plain one
    opens_and_sends(pb, -2, REPLICA_A, cmd("READONLY") + cmd("GET", "b"))
    pb >> DataReceived(-2, b"+OK\r\n")  # READONLY's answer: consumed by the codec
    pb >> DataReceived(-2, bulk("r"))
    pb << Write(1, bulk("r"))
    pb >> DataReceived(1, cmd("SET", "b", "v"))  # a write: the primary
    opens_and_sends(pb, -3, A, cmd("SET", "b", "v"))
    pb >> DataReceived(-3, b"+OK\r\n")
    pb << Write(1, b"+OK\r\n")
    for conn in (1, -1, -2, -3):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_node_that_cannot_be_reached_asks_for_a_refresh() -> None:
    from metaprotocol.core.events import UpstreamConnectFailed

    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(-1, *C)
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << RefreshSlotMap("redis")
    reply = pb.take()
    assert isinstance(reply, Write) and reply.data.startswith(b"-ERR")
    pb >> Closed(1)
    pb.assert_clean()


def test_a_new_map_retires_the_pools_of_nodes_it_no_longer_names() -> None:
    pb = cluster_playbook()
    pb >> SlotMapChanged("redis", slot_map())
    pb >> DataReceived(1, cmd("GET", "a"))
    opens_and_sends(pb, -1, C, cmd("GET", "a"))
    pb >> DataReceived(-1, bulk("1"))
    pb << Write(1, bulk("1"))
    two = SlotMap(
        (Shard(((0, 10922),), ClusterNode(*A)), Shard(((10923, 16383),), ClusterNode(*B)))
    )
    pb >> SlotMapChanged("redis", two)  # C is gone: its idle connection closes
    closing = pb.take()
    assert closing.conn == -1  # type: ignore[union-attr]
    labels = {ep.label for ep in pb.proxy.runtime.clusters["redis"].endpoints}
    assert labels == {"10.0.0.1:7000", "10.0.0.2:7000"}
    pb >> Closed(1)
    pb >> Closed(-1)
    pb.assert_clean()

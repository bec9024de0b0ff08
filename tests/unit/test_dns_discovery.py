"""DNS discovery (metaprotocol.discovery.dns): a cluster on a name whose records change.

Two ways to change the records: a resolver injected into the job (every rule, no network),
and the system resolver reading an ``/etc/hosts`` the test rewrites, inside a mount and
network namespace of its own (``unshare``, as root).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import ClusterConfig, Config, Endpoint
from metaprotocol.discovery.dns import FIRST_RETRY, DnsJob, dns_jobs, system_resolve
from metaprotocol.discovery.refresher import DnsRefresher


class TableResolver:
    """Answers from a table the test edits: a list of addresses, or an error to raise."""

    def __init__(self, **records: list[str] | OSError) -> None:
        self.records: dict[str, list[str] | OSError] = {
            k.replace("_", "."): v for k, v in records.items()
        }
        self.asked: list[tuple[str, int]] = []
        self.rounds: queue.Queue[str] = queue.Queue()  # each name asked, as it is asked

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        self.rounds.put(host)
        answer = self.records.get(host, OSError(f"{host}: Name or service not known"))
        if isinstance(answer, OSError):
            raise answer
        return answer


def _cluster(*names: str, refresh: float = 30.0, weight: int = 1) -> ClusterConfig:
    endpoints = tuple(
        Endpoint(host, int(port), weight) for host, port in (n.rsplit(":", 1) for n in names)
    )
    return ClusterConfig("cache", endpoints, discovery="dns", dns_refresh=refresh)


def test_every_record_is_an_endpoint_with_the_names_port_and_weight() -> None:
    resolve = TableResolver(cache_internal=["10.0.0.2", "10.0.0.1", "fd00::1"])
    job = DnsJob(_cluster("cache.internal:6379", weight=3), resolve)
    first = job.run(now=100.0)
    assert first.endpoints == (
        Endpoint("10.0.0.1", 6379, 3),
        Endpoint("10.0.0.2", 6379, 3),
        Endpoint("fd00::1", 6379, 3),
    )
    assert first.changed and first.complete and first.failed == ()
    assert first.next_run == 130.0
    assert resolve.asked == [("cache.internal", 6379)]


def test_changed_records_change_the_endpoints_and_rotation_does_not() -> None:
    resolve = TableResolver(cache_internal=["10.0.0.1", "10.0.0.2"])
    job = DnsJob(_cluster("cache.internal:6379"), resolve)
    job.run(0.0)
    resolve.records["cache.internal"] = ["10.0.0.2", "10.0.0.1"]  # the server rotates
    assert not job.run(30.0).changed
    resolve.records["cache.internal"] = ["10.0.0.2", "10.0.0.3"]
    moved = job.run(60.0)
    assert moved.changed
    assert moved.endpoints == (Endpoint("10.0.0.2", 6379), Endpoint("10.0.0.3", 6379))
    assert job.endpoints == moved.endpoints


def test_several_names_in_config_order_and_each_address_once() -> None:
    resolve = TableResolver(b_internal=["10.0.0.9", "10.0.0.1"], a_internal=["10.0.0.1"])
    job = DnsJob(_cluster("b.internal:7000", "a.internal:7000", "a.internal:7001"), resolve)
    assert job.run(0.0).endpoints == (
        Endpoint("10.0.0.1", 7000),
        Endpoint("10.0.0.9", 7000),
        Endpoint("10.0.0.1", 7001),
    )


def test_a_failed_name_keeps_its_last_good_records_and_retries_with_backoff() -> None:
    resolve = TableResolver(cache_internal=["10.0.0.1"], other_internal=["10.0.0.7"])
    job = DnsJob(_cluster("cache.internal:6379", "other.internal:6379", refresh=10.0), resolve)
    good = job.run(0.0)
    resolve.records["cache.internal"] = OSError("Temporary failure in name resolution")
    resolve.records["other.internal"] = ["10.0.0.8"]
    delays = []
    now = 0.0
    for _ in range(6):
        round_ = job.run(now)
        assert round_.failed == ("cache.internal: Temporary failure in name resolution",)
        # The failed name keeps 10.0.0.1; the other name's new record is taken.
        assert round_.endpoints == (Endpoint("10.0.0.1", 6379), Endpoint("10.0.0.8", 6379))
        delays.append(round_.next_run - now)
        now = round_.next_run
    assert good.endpoints[0] == Endpoint("10.0.0.1", 6379)
    assert FIRST_RETRY == 1.0
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # doubling, capped at dns_refresh
    resolve.records["cache.internal"] = ["10.0.0.2"]
    back = job.run(now)
    assert back.failed == () and back.next_run - now == 10.0  # the refresh pace again
    assert back.endpoints == (Endpoint("10.0.0.2", 6379), Endpoint("10.0.0.8", 6379))
    resolve.records["cache.internal"] = OSError("again")
    assert job.run(0.0).next_run == 1.0  # the backoff starts over


def test_an_empty_answer_counts_as_a_failure() -> None:
    resolve = TableResolver(cache_internal=["10.0.0.1"])
    job = DnsJob(_cluster("cache.internal:6379"), resolve)
    job.run(0.0)
    resolve.records["cache.internal"] = []
    round_ = job.run(30.0)
    assert round_.failed == ("cache.internal: no addresses",)
    assert round_.endpoints == (Endpoint("10.0.0.1", 6379),) and not round_.changed


def test_a_name_that_never_resolved_gives_no_endpoint_until_it_does() -> None:
    resolve = TableResolver(a_internal=["10.0.0.1"])
    job = DnsJob(_cluster("a.internal:1", "b.internal:1"), resolve)
    first = job.run(0.0)
    assert not first.complete and first.endpoints == (Endpoint("10.0.0.1", 1),)
    resolve.records["b.internal"] = ["10.0.0.2"]
    assert job.run(first.next_run).complete


def test_jobs_are_kept_across_reloads_when_the_names_stay() -> None:
    def config(*clusters: ClusterConfig) -> Config:
        return Config(listeners=(), clusters=clusters)

    static = ClusterConfig("static", (Endpoint("127.0.0.1", 1),))
    resolve = TableResolver(a_internal=["10.0.0.1"])
    jobs = dns_jobs(config(static, _cluster("a.internal:1")), resolve=resolve)
    assert list(jobs) == ["cache"]
    jobs["cache"].run(0.0)
    again = dns_jobs(config(static, _cluster("a.internal:1")), jobs, resolve)
    assert again["cache"] is jobs["cache"]  # its last good answers stay
    other = dns_jobs(config(_cluster("a.internal:1", refresh=5.0)), jobs, resolve)
    assert other["cache"] is not jobs["cache"] and other["cache"].endpoints == ()


def test_a_loaded_config_makes_its_job() -> None:
    config = parse_config(
        {
            "listeners": [
                {"name": "r", "address": "127.0.0.1:0", "codec": "redis",
                 "routes": [{"name": "all", "route": {"cluster": "c"}}]},
            ],
            "clusters": [
                {"name": "c", "endpoints": ["localhost:6379"], "discovery": "dns",
                 "dns_refresh": "2s"},
            ],
        }
    )  # fmt: skip
    (job,) = dns_jobs(config, resolve=TableResolver(localhost=["127.0.0.1"])).values()
    assert (job.cluster, job.refresh) == ("c", 2.0)
    assert job.run(0.0).endpoints == (Endpoint("127.0.0.1", 6379),)


def test_the_system_resolver_answers_ip_literals_and_hosts_entries() -> None:
    assert system_resolve("127.0.0.1", 80) == ("127.0.0.1",)
    assert system_resolve("::1", 80) == ("::1",)
    assert "127.0.0.1" in system_resolve("localhost", 80)


# ------------------------------------------------------------------ /etc/hosts in a namespace

_CHILD = textwrap.dedent(
    """
    import json, sys
    from metaprotocol.core.config import ClusterConfig, Endpoint
    from metaprotocol.discovery.dns import DnsJob

    hosts = sys.argv[1]
    base = "127.0.0.1 localhost\\n::1 localhost\\n"
    job = DnsJob(ClusterConfig("c", (Endpoint("cache.mesh.test", 6379),), discovery="dns"))
    rounds = []
    for now, records in enumerate([["10.9.0.1"], ["10.9.0.2", "fd00::9", "10.9.0.3"], []]):
        with open(hosts, "w") as f:  # in place: the bind mount follows the same file
            f.write(base + "".join(f"{r} cache.mesh.test\\n" for r in records))
        r = job.run(float(now))
        rounds.append({"endpoints": [str(e) for e in r.endpoints], "changed": r.changed,
                       "failed": len(r.failed)})
    print(json.dumps(rounds))
    """
)


def test_records_changing_in_etc_hosts_move_the_endpoints(tmp_path: Path) -> None:
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if os.geteuid() != 0 or unshare is None or mount is None:
        pytest.skip("needs root, unshare and mount for a private /etc/hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    # A mount namespace for the private /etc/hosts, an empty network namespace so a name
    # missing from it fails at once instead of asking a real DNS server.
    command = f"{mount} --bind {hosts} /etc/hosts && exec {sys.executable} {script} {hosts}"
    try:
        done = subprocess.run(
            [unshare, "--mount", "--net", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot run unshare: {exc}")
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    first, second, third = json.loads(done.stdout)
    assert first == {"endpoints": ["10.9.0.1:6379"], "changed": True, "failed": 0}
    assert second == {
        "endpoints": ["10.9.0.2:6379", "10.9.0.3:6379", "fd00::9:6379"],
        "changed": True,
        "failed": 0,
    }
    # The name is gone and DNS is unreachable: the last good records stay.
    assert third == {"endpoints": second["endpoints"], "changed": False, "failed": 1}


# ------------------------------------------------------------------ the refresher thread


def test_the_refresher_delivers_each_changed_set_from_its_thread() -> None:
    delivered: queue.Queue[tuple[str, tuple[Endpoint, ...], str]] = queue.Queue()

    def deliver(cluster: str, endpoints: tuple[Endpoint, ...]) -> None:
        delivered.put((cluster, endpoints, threading.current_thread().name))

    resolve = TableResolver(cache_internal=["10.0.0.1"])
    refresher = DnsRefresher(deliver, resolve)
    config = Config(listeners=(), clusters=(_cluster("cache.internal:6379", refresh=3600.0),))
    refresher.start(config)
    try:
        first = delivered.get(timeout=10)
        assert first == ("cache", (Endpoint("10.0.0.1", 6379),), "metaprotocol-dns")
        resolve.rounds.get(timeout=10)
        refresher.refresh_now()  # unchanged: nothing delivered
        resolve.rounds.get(timeout=10)
        resolve.records["cache.internal"] = ["10.0.0.2"]
        refresher.refresh_now()
        assert delivered.get(timeout=10)[1] == (Endpoint("10.0.0.2", 6379),)
        resolve.rounds.get(timeout=10)
        # A reload that keeps the names keeps the job: no redelivery of the same set.
        refresher.update(config)
        assert refresher.endpoints("cache") == (Endpoint("10.0.0.2", 6379),)
        # A failed name delivers nothing (its last good records stay).
        resolve.records["cache.internal"] = OSError("gone")
        refresher.refresh_now()
        resolve.rounds.get(timeout=10)
        resolve.records["cache.internal"] = ["10.0.0.3"]
        refresher.refresh_now()
        assert delivered.get(timeout=10)[1] == (Endpoint("10.0.0.3", 6379),)
        assert delivered.empty()
        assert refresher.clusters == ("cache",)
    finally:
        refresher.stop()
    assert refresher.rounds == 5


def test_a_refused_delivery_is_retried_by_the_next_round() -> None:
    delivered: queue.Queue[tuple[Endpoint, ...]] = queue.Queue()
    calls = []

    def deliver(cluster: str, endpoints: tuple[Endpoint, ...]) -> None:
        calls.append(endpoints)
        if len(calls) == 1:
            raise RuntimeError("the loop is busy")
        delivered.put(endpoints)

    refresher = DnsRefresher(deliver, TableResolver(cache_internal=["10.0.0.1"]))
    refresher.start(Config(listeners=(), clusters=(_cluster("cache.internal:1", refresh=3600.0),)))
    try:
        # Refused once, offered again a FIRST_RETRY later, not a dns_refresh (an hour) later.
        assert delivered.get(timeout=10 + FIRST_RETRY) == (Endpoint("10.0.0.1", 1),)
        assert len(calls) == 2
    finally:
        refresher.stop()


def test_a_config_without_dns_clusters_starts_no_thread() -> None:
    refresher = DnsRefresher(lambda c, e: None, TableResolver())
    refresher.start(Config(listeners=(), clusters=(ClusterConfig("s", (Endpoint("h", 1),)),)))
    assert refresher.clusters == ()
    refresher.stop()
    assert not any(t.name == "metaprotocol-dns" for t in threading.enumerate())

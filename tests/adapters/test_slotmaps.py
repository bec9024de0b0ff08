"""The slot-map jobs (adapters/slotmaps.py) with a fake fetch: a map is fed to the core as
SlotMapChanged once per change, a failed fetch feeds nothing, ``refresh`` fetches at once,
and a reload keeps the job of an unchanged cluster and replaces a changed one's."""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable

from metaprotocol.adapters.jobs import Periodic
from metaprotocol.adapters.slotmaps import SlotMapJobs
from metaprotocol.codecs.redis.cluster import ClusterNode, Shard, SlotMap
from metaprotocol.core.config import (
    ClusterConfig,
    Config,
    Endpoint,
    RedisClusterConfig,
)
from metaprotocol.core.events import Event, SlotMapChanged

TIMEOUT = 10.0
ONE = SlotMap((Shard(((0, 16383),), ClusterNode("10.0.0.1", 7000)),))
TWO = SlotMap((Shard(((0, 16383),), ClusterNode("10.0.0.2", 7000)),))


def _config(interval: float = 3600.0) -> Config:
    cluster = ClusterConfig(
        "cache", (Endpoint("10.0.0.1", 7000),), redis_cluster=RedisClusterConfig(interval)
    )
    return Config(listeners=(), clusters=(cluster, ClusterConfig("plain", ())))


class _Loop:
    """Stands in for the loop and ``Serving.every``: outcomes are run by ``run_one`` and the
    events they make are collected in ``fed``."""

    def __init__(self) -> None:
        self.posted: queue.Queue[Callable[[], None]] = queue.Queue()
        self.fed: list[Event] = []
        self.jobs: list[Periodic[SlotMap]] = []

    def post(self, fn: Callable[[], None]) -> None:
        self.posted.put(fn)

    def run_one(self) -> None:
        self.posted.get(timeout=TIMEOUT)()

    def every(
        self,
        interval: float,
        job: Callable[[], SlotMap],
        event: Callable[[SlotMap | None, str], Event | None],
        name: str,
    ) -> Periodic[SlotMap]:
        def done(result: SlotMap | None, error: str) -> None:
            if (happened := event(result, error)) is not None:
                self.fed.append(happened)

        periodic = Periodic(interval, job, done, self.post, name)
        periodic.min_gap = 0.0
        self.jobs.append(periodic)
        return periodic.start()

    def close(self) -> None:
        for job in self.jobs:
            job.close(TIMEOUT)


def test_maps_are_fed_once_per_change_and_refresh_fetches_now() -> None:
    loop = _Loop()
    fed = loop.fed
    answers: list[SlotMap | Exception] = [ONE, ONE, OSError("all seeds down"), TWO]
    asked: list[str] = []

    def fetch(cluster: ClusterConfig) -> SlotMap:
        asked.append(cluster.name)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    jobs = SlotMapJobs(fetch)
    jobs.update(_config())  # before start: nothing runs
    assert asked == []
    jobs.start(loop.every, _config())
    try:
        loop.run_one()
        assert fed == [SlotMapChanged("cache", ONE)]
        for _ in range(3):  # the same map, a failure, then a new map
            jobs.refresh("cache")
            loop.run_one()
        jobs.refresh("not-a-redis-cluster")  # ignored
    finally:
        loop.close()
    assert fed == [SlotMapChanged("cache", ONE), SlotMapChanged("cache", TWO)]
    assert asked == ["cache"] * 4  # only the Redis Cluster has a job


def test_a_reload_replaces_the_job_of_a_changed_cluster_only() -> None:
    loop = _Loop()
    fed = loop.fed
    jobs = SlotMapJobs(lambda cluster: ONE)
    config = _config()
    jobs.start(loop.every, config)
    try:
        loop.run_one()
        jobs.update(dataclasses.replace(config))  # equal: the job stays, nothing refetched
        assert loop.posted.empty()
        jobs.update(_config(interval=60.0))  # changed: a new job, its map delivered again
        loop.run_one()
    finally:
        loop.close()
    assert fed == [SlotMapChanged("cache", ONE)] * 2

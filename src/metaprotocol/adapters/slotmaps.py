"""Redis Cluster slot maps for the core (docs/architecture.md, "Redis Cluster upstreams"):
one job per cluster with ``redis_cluster``, run by ``Serving.every`` (a ``Periodic`` on a
thread of its own) at start and every ``refresh_interval``, fetching the map from the
cluster's seeds (``fetch_cluster_slot_map``: blocking, never on the loop). Each map that
differs from the last one delivered becomes ``SlotMapChanged`` for the core.
``refresh(cluster)`` runs the job now (``Periodic.wake``): how the adapters execute the
core's ``RefreshSlotMap`` instruction. A failed fetch is logged; the core keeps its map."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from metaprotocol.adapters.jobs import Periodic
from metaprotocol.codecs.redis.cluster import SlotMap
from metaprotocol.core.config import ClusterConfig, Config
from metaprotocol.core.events import Event, SlotMapChanged
from metaprotocol.discovery.redis_cluster import fetch_cluster_slot_map

__all__ = ["Every", "Fetch", "SlotMapJobs"]

log = logging.getLogger("metaprotocol")

Fetch = Callable[[ClusterConfig], SlotMap]
Every = Callable[
    [float, Callable[[], SlotMap], Callable[[SlotMap | None, str], Event | None], str],
    Periodic[SlotMap],
]
"""``Serving.every``: run a job periodically, its outcomes turned into events."""


class SlotMapJobs:
    """The slot-map jobs of a config's Redis Clusters (see the module docstring)."""

    def __init__(self, fetch: Fetch = fetch_cluster_slot_map) -> None:
        self._fetch = fetch
        self._every: Every | None = None  # set by ``start``
        self._jobs: dict[str, tuple[ClusterConfig, Periodic[SlotMap]]] = {}
        self._last: dict[str, SlotMap] = {}

    def start(self, every: Every | None, config: Config) -> None:
        """Start the jobs of ``config``'s Redis Clusters through ``every`` (None: the
        adapter cannot run jobs off its loop; nothing runs, seeds serve, MOVED follows)."""
        self._every = every
        self.update(config)

    def update(self, config: Config) -> None:
        """Run the jobs of ``config``'s Redis Clusters (after a reload: a cluster whose
        config did not change keeps its job). Nothing runs before ``start``."""
        every = self._every
        if every is None:
            return
        wanted = {c.name: c for c in config.clusters if c.redis_cluster is not None}
        for name, (cluster, job) in list(self._jobs.items()):
            if wanted.get(name) != cluster:
                job.close(timeout=0.0)
                del self._jobs[name]
                self._last.pop(name, None)
        for name, cluster in wanted.items():
            if name in self._jobs or cluster.redis_cluster is None:
                continue
            job = every(
                cluster.redis_cluster.refresh_interval,
                partial(self._fetch, cluster),
                partial(self._fetched, name, cluster),
                f"metaprotocol-slots-{name}",
            )
            self._jobs[name] = (cluster, job)

    def refresh(self, cluster: str) -> None:
        """Fetch ``cluster``'s slot map now (the core's ``RefreshSlotMap``)."""
        entry = self._jobs.get(cluster)
        if entry is not None:
            entry[1].wake()

    def _fetched(
        self, name: str, cluster: ClusterConfig, result: SlotMap | None, error: str
    ) -> Event | None:
        """On the loop's thread: a job's outcome, as the event for the core (if any)."""
        entry = self._jobs.get(name)
        if entry is None or entry[0] is not cluster:
            return None  # the cluster changed since the fetch began
        if result is None:
            log.warning("cluster %s: slot map not refreshed: %s", name, error)
            return None
        if result.uncovered:
            log.warning("cluster %s: %d slots have no primary", name, result.uncovered)
        if self._last.get(name) == result:
            return None
        self._last[name] = result
        return SlotMapChanged(name, result)

"""The DNS refresher: runs a config's DNS jobs in a thread of its own, off the event loop.

``DnsRefresher(deliver)`` resolves, in one daemon thread, every ``discovery: dns`` cluster
of the config it was given (``start`` / ``update``) whenever its job is due, and calls
``deliver(cluster, endpoints)`` from that thread for each endpoint set that changed (never
an empty one: a cluster whose names never resolved keeps what it has). The caller passes
each set to its loop, where the core takes it as an ``EndpointsChanged`` event; a set
``deliver`` refused (it raised) is offered again after ``FIRST_RETRY`` seconds. ``update``
after a reload keeps the jobs (and their last good answers) of clusters whose names did
not change; ``stop`` ends the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from metaprotocol.core.config import Config, Endpoint
from metaprotocol.core.events import EndpointsChanged
from metaprotocol.discovery.dns import FIRST_RETRY, DnsJob, Resolve, dns_jobs, system_resolve

__all__ = ["Deliver", "DnsRefresher"]

log = logging.getLogger("metaprotocol")

Deliver = Callable[[str, tuple[Endpoint, ...]], None]


class DnsRefresher:
    """Re-resolves the names of ``discovery: dns`` clusters (see the module docstring)."""

    def __init__(
        self,
        deliver: Deliver | None,
        resolve: Resolve = system_resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deliver = deliver
        self._resolve = resolve
        self._clock = clock
        self._jobs: dict[str, DnsJob] = {}
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.rounds = 0  # rounds run, for tests and stats

    @classmethod
    def feeding(
        cls,
        post: Callable[[Callable[[], None]], object] | None,
        feed: Callable[[EndpointsChanged], object],
    ) -> DnsRefresher:
        """A refresher whose sets reach a core: each is posted to the loop (``post``: its
        thread-safe "run this soon") and fed there as an event. Without ``post`` it never
        runs (the adapter cannot take results from a thread)."""
        if post is None:
            return cls(None)

        def deliver(cluster: str, endpoints: tuple[Endpoint, ...]) -> None:
            def run() -> None:  # on the loop's thread: nothing once stopped (closing)
                if not refresher._stopped:
                    feed(EndpointsChanged(cluster, endpoints))

            post(run)

        refresher = cls(deliver)
        return refresher

    @property
    def clusters(self) -> tuple[str, ...]:
        with self._wake:
            return tuple(self._jobs)

    def started(self, config: Config) -> DnsRefresher:
        """``start(config)``, then this refresher."""
        self.start(config)
        return self

    def start(self, config: Config) -> None:
        """Take ``config``'s DNS clusters and start the thread (a no-op thread-wise when
        there are none: ``update`` starts it once some appear)."""
        self.update(config)

    def update(self, config: Config) -> None:
        """Resolve ``config``'s DNS clusters from now on (after a reload)."""
        with self._wake:
            self._jobs = dns_jobs(config, self._jobs, self._resolve)
            idle = self._deliver is None or self._stopped
            if self._jobs and self._thread is None and not idle:
                self._thread = threading.Thread(
                    target=self._run, name="metaprotocol-dns", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def endpoints(self, cluster: str) -> tuple[Endpoint, ...]:
        """The last endpoint set resolved for ``cluster`` (empty: none yet)."""
        with self._wake:
            job = self._jobs.get(cluster)
        return () if job is None else job.endpoints

    def refresh_now(self) -> None:
        """Make every job due at once (its answers are wanted now)."""
        with self._wake:
            for job in self._jobs.values():
                job.next_run = 0.0
            self._wake.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (waiting up to ``timeout`` for a resolution in progress; nothing
        is delivered after it returns, unless a delivery had already begun)."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped:
                    now = self._clock()
                    due = [j for j in self._jobs.values() if j.next_run <= now]
                    if due:
                        break
                    soonest = min((j.next_run for j in self._jobs.values()), default=None)
                    self._wake.wait(None if soonest is None else soonest - now)
                if self._stopped:
                    return
            for job in due:  # resolution blocks: outside the lock
                self._round(job)

    def _round(self, job: DnsJob) -> None:
        result = job.run(self._clock())
        self.rounds += 1
        for failure in result.failed:
            log.warning("cluster %s: DNS resolution failed: %s", job.cluster, failure)
        with self._wake:
            current = self._jobs.get(job.cluster) is job and not self._stopped
        if current and result.changed and result.endpoints and self._deliver is not None:
            try:
                self._deliver(job.cluster, result.endpoints)
            except Exception:  # the loop is gone (stopping) or refused: the next round retries
                if self._stopped:
                    return
                log.exception("cluster %s: new DNS endpoints not applied", job.cluster)
                job.forget()
                job.next_run = min(job.next_run, self._clock() + FIRST_RETRY)

"""DNS discovery: re-resolve a cluster's names and make every A/AAAA record an endpoint.

A ``DnsJob`` belongs to one cluster with ``discovery: dns``. ``run(now)`` resolves each of
the cluster's endpoint names (blocking: call it off the event loop) and returns a
``DnsRound``: the cluster's endpoints now, whether they changed since the last round and
when the next round is due.

Rules:

- Every address a name resolves to (A and AAAA, in the resolver's order, duplicates
  dropped) is an endpoint with the port and weight written for that name. An address
  written as an IP literal resolves to itself.
- The endpoint set is in the order of the names in the config, each name's addresses
  sorted (IPv4 before IPv6), so a DNS server rotating its answers changes nothing.
- A name that fails to resolve (or resolves to nothing) keeps the addresses of its last
  good answer; the round counts as failed, and the next one comes after a backoff:
  ``FIRST_RETRY`` seconds, doubling after each failed round, never more than
  ``dns_refresh``. A round where every name resolved brings back the ``dns_refresh`` pace.
- A name that has never resolved contributes no endpoint (``DnsRound.complete`` is False
  until each name has resolved once).

``dns_jobs(config, previous)`` gives the jobs a config needs, reusing the previous job
(and so its last good answers) of a cluster whose names and refresh did not change.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from metaprotocol.core.config import ClusterConfig, Config, Endpoint

__all__ = [
    "FIRST_RETRY",
    "DnsJob",
    "DnsRound",
    "Resolve",
    "dns_jobs",
    "system_resolve",
]

FIRST_RETRY: Final = 1.0
"""Seconds before the first retry after a failed round (doubling, capped at dns_refresh)."""

Resolve = Callable[[str, int], Sequence[str]]
"""``resolve(host, port)`` -> the host's addresses as strings; raises ``OSError`` when the
name does not resolve. ``system_resolve`` (getaddrinfo) by default; tests inject their own."""


def system_resolve(host: str, port: int) -> tuple[str, ...]:
    """The A and AAAA records of ``host`` (or ``host`` itself when it is an IP literal), in
    getaddrinfo's order, each once. Raises ``OSError`` (``socket.gaierror``) on failure."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: dict[str, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return tuple(seen)


def _address_key(address: str) -> tuple[int, int, str]:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return (9, 0, address)  # a resolver returning names: keep them, after the addresses
    return (ip.version, int(ip), address)


@dataclass(frozen=True, slots=True)
class DnsRound:
    """What one round of resolution found."""

    endpoints: tuple[Endpoint, ...]  # every record of every name (last good for failed ones)
    changed: bool  # endpoints differ from the previous round's
    failed: tuple[str, ...]  # the names that did not resolve this round, with the reasons
    complete: bool  # every name has resolved at least once
    next_run: float  # when the next round is due (same clock as ``now``)


class DnsJob:
    """Re-resolves the names of one cluster (see the module rules). Not thread-safe: run
    one round at a time."""

    def __init__(self, cluster: ClusterConfig, resolve: Resolve = system_resolve) -> None:
        self.cluster = cluster.name
        self.names: tuple[Endpoint, ...] = cluster.endpoints  # as written: host, port, weight
        self.refresh = cluster.dns_refresh
        self._resolve = resolve
        self._answers: dict[Endpoint, tuple[str, ...]] = {}  # name -> last good addresses
        self._endpoints: tuple[Endpoint, ...] = ()
        self._failed_rounds = 0
        self.next_run = 0.0  # due at once

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoint set of the last round (empty before the first)."""
        return self._endpoints

    def forget(self) -> None:
        """Count the next round's endpoints as changed (the last ones were not applied)."""
        self._endpoints = ()

    def run(self, now: float) -> DnsRound:
        """Resolve every name once (blocking); ``now`` is the caller's clock."""
        failed: list[str] = []
        for name in self.names:
            try:
                found = tuple(self._resolve(name.host, name.port))
            except (OSError, UnicodeError) as exc:
                failed.append(f"{name.host}: {exc}")
                continue
            if not found:
                failed.append(f"{name.host}: no addresses")
                continue
            self._answers[name] = tuple(sorted(dict.fromkeys(found), key=_address_key))
        endpoints: dict[tuple[str, int], Endpoint] = {}
        for name in self.names:
            for address in self._answers.get(name, ()):
                endpoints.setdefault(
                    (address, name.port), Endpoint(address, name.port, name.weight)
                )
        fresh = tuple(endpoints.values())
        changed = fresh != self._endpoints
        self._endpoints = fresh
        if failed:
            delay = min(FIRST_RETRY * 2.0**self._failed_rounds, self.refresh)
            self._failed_rounds += 1
        else:
            delay = self.refresh
            self._failed_rounds = 0
        self.next_run = now + delay
        complete = all(name in self._answers for name in self.names)
        return DnsRound(fresh, changed, tuple(failed), complete, self.next_run)


def dns_jobs(
    config: Config,
    previous: Mapping[str, DnsJob] | None = None,
    resolve: Resolve = system_resolve,
) -> dict[str, DnsJob]:
    """The jobs of ``config``'s ``discovery: dns`` clusters by cluster name; a cluster whose
    names and ``dns_refresh`` are unchanged keeps its job from ``previous``."""
    previous = previous or {}
    jobs: dict[str, DnsJob] = {}
    for cluster in config.clusters:
        if cluster.discovery != "dns":
            continue
        old = previous.get(cluster.name)
        if (
            old is not None
            and old.names == cluster.endpoints
            and old.refresh == cluster.dns_refresh
        ):
            jobs[cluster.name] = old
        else:
            jobs[cluster.name] = DnsJob(cluster, resolve)
    return jobs

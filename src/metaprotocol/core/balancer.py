"""Load-balancing policies over a cluster's endpoints: round robin, random, least request,
ring hash and maglev. Randomness is injected as a ``() -> float`` in [0, 1)."""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from metaprotocol.core.config import Endpoint

__all__ = [
    "Balancer",
    "EndpointState",
    "LeastRequest",
    "Maglev",
    "RandomPick",
    "RingHash",
    "RoundRobin",
    "make_balancer",
    "stable_hash",
]

RandomSource = Callable[[], float]


def stable_hash(key: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted). A key
    decoded from a client's bytes may hold lone surrogates (undecodable bytes, kept with
    ``surrogateescape``): they hash as those bytes instead of raising."""
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big"
    )


class EndpointState:
    """One endpoint's live state: load, outlier-ejection bookkeeping, active health."""

    __slots__ = (
        "active_requests",
        "consecutive_failures",
        "ejected_until",
        "ejection_count",
        "endpoint",
        "health_excluded",
        "label",
        "pools",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.label = str(endpoint)
        self.active_requests = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejection_count = 0
        self.pools: dict[str, Any] = {}  # listener name -> its Pool to this endpoint
        # Active health checking has it out of rotation (core/health.py: never while too
        # few of the cluster's endpoints are healthy).
        self.health_excluded = False

    def available(self, now: float) -> bool:
        return self.ejected_until <= now and not self.health_excluded


class Balancer:
    """Picks an endpoint. ``exclude`` holds endpoints a retry should avoid when it can."""

    def __init__(self, endpoints: Sequence[EndpointState], random: RandomSource) -> None:
        self.endpoints = list(endpoints)
        self.random = random

    def candidates(self, now: float, exclude: frozenset[str]) -> list[EndpointState]:
        healthy = [e for e in self.endpoints if e.available(now)]
        fresh = [e for e in healthy if e.label not in exclude]
        return fresh or healthy

    def pick(
        self, now: float, hash_key: str | None, exclude: frozenset[str]
    ) -> EndpointState | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    def __init__(self, endpoints: Sequence[EndpointState], random: RandomSource) -> None:
        super().__init__(endpoints, random)
        self._next = 0

    def pick(
        self, now: float, hash_key: str | None, exclude: frozenset[str]
    ) -> EndpointState | None:
        eps = self.endpoints
        if len(eps) == 1 and not exclude and eps[0].available(now):
            return eps[0]  # the common single-endpoint fast path
        cands = self.candidates(now, exclude)
        if not cands:
            return None
        self._next += 1
        return cands[self._next % len(cands)]


class RandomPick(Balancer):
    def pick(
        self, now: float, hash_key: str | None, exclude: frozenset[str]
    ) -> EndpointState | None:
        cands = self.candidates(now, exclude)
        if not cands:
            return None
        return cands[int(self.random() * len(cands)) % len(cands)]


class LeastRequest(Balancer):
    """Power of two choices: sample two candidates, take the one with fewer active requests."""

    def pick(
        self, now: float, hash_key: str | None, exclude: frozenset[str]
    ) -> EndpointState | None:
        cands = self.candidates(now, exclude)
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        a = cands[int(self.random() * len(cands)) % len(cands)]
        b = cands[int(self.random() * len(cands)) % len(cands)]
        return a if a.active_requests <= b.active_requests else b


class _HashBalancer(Balancer):
    """Consistent hashing; without a hash key it falls back to random."""

    def lookup(self, h: int) -> int:
        raise NotImplementedError

    def pick(
        self, now: float, hash_key: str | None, exclude: frozenset[str]
    ) -> EndpointState | None:
        if not self.endpoints:
            return None
        h = stable_hash(hash_key) if hash_key is not None else int(self.random() * 2**64)
        # Walk successive probes until an available endpoint turns up (ejected ones are skipped
        # so keys on healthy endpoints never move).
        for attempt in range(len(self.endpoints) * 4):
            ep = self.endpoints[self.lookup(h if attempt == 0 else stable_hash(f"{h}:{attempt}"))]
            if ep.available(now) and ep.label not in exclude:
                return ep
        cands = self.candidates(now, exclude)
        return cands[h % len(cands)] if cands else None


class RingHash(_HashBalancer):
    """Ketama-style ring with virtual nodes proportional to endpoint weight."""

    VNODES = 160

    def __init__(self, endpoints: Sequence[EndpointState], random: RandomSource) -> None:
        super().__init__(endpoints, random)
        points: list[tuple[int, int]] = []
        for index, ep in enumerate(self.endpoints):
            for v in range(self.VNODES * max(1, ep.endpoint.weight)):
                points.append((stable_hash(f"{ep.label}#{v}"), index))
        points.sort()
        self._hashes = [p[0] for p in points]
        self._owners = [p[1] for p in points]

    def lookup(self, h: int) -> int:
        i = bisect_left(self._hashes, h)
        return self._owners[i % len(self._owners)]


class Maglev(_HashBalancer):
    """Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4) of prime size."""

    # Envoy uses 65537; a smaller prime keeps table builds fast in Python while the
    # remapping bound on endpoint changes (about 1/N of keys) still holds.
    TABLE_SIZE = 5003

    def __init__(self, endpoints: Sequence[EndpointState], random: RandomSource) -> None:
        super().__init__(endpoints, random)
        self._table = self._populate()

    def _populate(self) -> list[int]:
        m = self.TABLE_SIZE
        n = len(self.endpoints)
        if n == 0:
            return []
        offsets = [stable_hash(e.label + "/offset") % m for e in self.endpoints]
        skips = [stable_hash(e.label + "/skip") % (m - 1) + 1 for e in self.endpoints]
        weights = [max(1, e.endpoint.weight) for e in self.endpoints]
        table = [-1] * m
        nexts = [0] * n
        filled = 0
        while True:
            for i in range(n):
                for _ in range(weights[i]):
                    c = (offsets[i] + nexts[i] * skips[i]) % m
                    while table[c] >= 0:
                        nexts[i] += 1
                        c = (offsets[i] + nexts[i] * skips[i]) % m
                    table[c] = i
                    nexts[i] += 1
                    filled += 1
                    if filled == m:
                        return table

    def lookup(self, h: int) -> int:
        return self._table[h % self.TABLE_SIZE]


_POLICIES: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "random": RandomPick,
    "least_request": LeastRequest,
    "ring_hash": RingHash,
    "maglev": Maglev,
}


def make_balancer(
    policy: str, endpoints: Sequence[EndpointState], random: RandomSource
) -> Balancer:
    try:
        cls = _POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown lb_policy {policy!r}") from None
    return cls(endpoints, random)

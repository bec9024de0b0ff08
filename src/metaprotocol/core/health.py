"""Active health: each endpoint's state from its probe results, and which endpoints serve.

Rules (one ``HealthTable`` per cluster with a ``health_check``):

- An endpoint starts ``PENDING`` (never probed). Its first result decides at once:
  a pass makes it ``HEALTHY``, a failure ``UNHEALTHY`` (as Envoy treats a new host).
- A ``HEALTHY`` endpoint turns ``UNHEALTHY`` after ``unhealthy_threshold`` failures in a
  row; an ``UNHEALTHY`` one turns ``HEALTHY`` after ``healthy_threshold`` passes in a row.
  A result of the other kind restarts the count.
- Only ``HEALTHY`` endpoints serve, unless fewer than ``PANIC_THRESHOLD`` percent of the
  cluster's endpoints are healthy: then every endpoint serves (Envoy's panic mode, with
  its default threshold of 50%), because sending to all beats refusing everything when the
  health checks themselves may be what is wrong.
- A new endpoint set (DNS, EDS, a reload) keeps the state of the endpoints that remain;
  new ones start ``PENDING``, removed ones are forgotten.

Pure: the caller feeds results (``record``) and asks ``serving``; probing is elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from metaprotocol.core.config import Endpoint, HealthCheck

__all__ = [
    "PANIC_THRESHOLD",
    "EndpointHealth",
    "HealthChange",
    "HealthTable",
    "ProbeOutcome",
    "serving_endpoints",
]

PANIC_THRESHOLD: Final = 50.0
"""Percent of a cluster's endpoints that must be healthy for only those to serve."""


class EndpointHealth(enum.Enum):
    PENDING = "pending"  # not probed yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ProbeOutcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"


class _Threshold(enum.Enum):
    NONE = "none"  # the transition happens on the first such result
    HEALTHY = "healthy"  # after healthy_threshold such results in a row
    UNHEALTHY = "unhealthy"  # after unhealthy_threshold such results in a row


# (state, outcome) -> (state reached, after how many such outcomes in a row).
_TRANSITIONS: Final[
    dict[tuple[EndpointHealth, ProbeOutcome], tuple[EndpointHealth, _Threshold]]
] = {
    (EndpointHealth.PENDING, ProbeOutcome.PASSED): (EndpointHealth.HEALTHY, _Threshold.NONE),
    (EndpointHealth.PENDING, ProbeOutcome.FAILED): (EndpointHealth.UNHEALTHY, _Threshold.NONE),
    (EndpointHealth.HEALTHY, ProbeOutcome.PASSED): (EndpointHealth.HEALTHY, _Threshold.NONE),
    (EndpointHealth.HEALTHY, ProbeOutcome.FAILED): (
        EndpointHealth.UNHEALTHY,
        _Threshold.UNHEALTHY,
    ),
    (EndpointHealth.UNHEALTHY, ProbeOutcome.PASSED): (EndpointHealth.HEALTHY, _Threshold.HEALTHY),
    (EndpointHealth.UNHEALTHY, ProbeOutcome.FAILED): (
        EndpointHealth.UNHEALTHY,
        _Threshold.NONE,
    ),
}


@dataclass(frozen=True, slots=True)
class HealthChange:
    """An endpoint changed state (for stats and the log)."""

    endpoint: Endpoint
    before: EndpointHealth
    after: EndpointHealth


class _EndpointState:
    """One endpoint's health and the run of same results that may change it."""

    __slots__ = ("health", "outcome", "run")

    def __init__(self) -> None:
        self.health = EndpointHealth.PENDING
        self.outcome: ProbeOutcome | None = None  # the kind of the current run
        self.run = 0  # results of that kind in a row


class HealthTable:
    """The health of one cluster's endpoints (see the module rules)."""

    def __init__(self, check: HealthCheck, endpoints: Iterable[Endpoint] = ()) -> None:
        self.check = check
        self._states: dict[Endpoint, _EndpointState] = {}
        self.sync(endpoints)

    def sync(self, endpoints: Iterable[Endpoint]) -> None:
        """Take a new endpoint set: remaining endpoints keep their state."""
        old = self._states
        self._states = {e: old.get(e) or _EndpointState() for e in endpoints}

    def record(self, endpoint: Endpoint, outcome: ProbeOutcome) -> HealthChange | None:
        """Count one probe result; the change it makes, if any. Results for an endpoint
        no longer in the set (a probe that finished after it was removed) are ignored."""
        state = self._states.get(endpoint)
        if state is None:
            return None
        state.run = state.run + 1 if state.outcome is outcome else 1
        state.outcome = outcome
        target, threshold = _TRANSITIONS[state.health, outcome]
        if target is state.health:
            return None
        needed = 1
        if threshold is _Threshold.HEALTHY:
            needed = self.check.healthy_threshold
        elif threshold is _Threshold.UNHEALTHY:
            needed = self.check.unhealthy_threshold
        if state.run < needed:
            return None
        before, state.health = state.health, target
        return HealthChange(endpoint, before, target)

    def health(self, endpoint: Endpoint) -> EndpointHealth | None:
        state = self._states.get(endpoint)
        return None if state is None else state.health

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._states)

    def snapshot(self) -> dict[Endpoint, EndpointHealth]:
        """Every endpoint's health, in endpoint order."""
        return {e: s.health for e, s in self._states.items()}

    def serving(self) -> tuple[Endpoint, ...]:
        """The endpoints traffic may go to (healthy ones, or all in panic mode)."""
        return serving_endpoints(self.snapshot())

    def panicking(self) -> bool:
        """Whether too few endpoints are healthy, so all serve."""
        states = self.snapshot()
        return bool(states) and _healthy_percent(states) < PANIC_THRESHOLD


def _healthy_percent(states: dict[Endpoint, EndpointHealth]) -> float:
    healthy = sum(1 for h in states.values() if h is EndpointHealth.HEALTHY)
    return 100.0 * healthy / len(states)


def serving_endpoints(states: dict[Endpoint, EndpointHealth]) -> tuple[Endpoint, ...]:
    """The healthy endpoints of ``states``, or all of them when fewer than
    ``PANIC_THRESHOLD`` percent are healthy (panic mode)."""
    if not states or _healthy_percent(states) < PANIC_THRESHOLD:
        return tuple(states)
    return tuple(e for e, h in states.items() if h is EndpointHealth.HEALTHY)

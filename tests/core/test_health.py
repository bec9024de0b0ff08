"""core/health.py: thresholds, first results, endpoint-set changes and the panic rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.core.config import Endpoint, HealthCheck
from metaprotocol.core.health import (
    PANIC_THRESHOLD,
    EndpointHealth,
    HealthChange,
    HealthTable,
    ProbeOutcome,
    serving_endpoints,
)

A, B, C, D = (Endpoint("10.0.0.1", p) for p in (1, 2, 3, 4))
PASS, FAIL = ProbeOutcome.PASSED, ProbeOutcome.FAILED
PENDING, HEALTHY, UNHEALTHY = (
    EndpointHealth.PENDING,
    EndpointHealth.HEALTHY,
    EndpointHealth.UNHEALTHY,
)


def _table(*endpoints: Endpoint, unhealthy: int = 3, healthy: int = 2) -> HealthTable:
    check = HealthCheck(unhealthy_threshold=unhealthy, healthy_threshold=healthy)
    return HealthTable(check, endpoints)


def _trace(table: HealthTable, endpoint: Endpoint, outcomes: str) -> list[EndpointHealth]:
    """The endpoint's state after each result (``+`` passed, ``-`` failed)."""
    states = []
    for mark in outcomes:
        table.record(endpoint, PASS if mark == "+" else FAIL)
        health = table.health(endpoint)
        assert health is not None
        states.append(health)
    return states


def test_endpoints_start_pending_and_the_first_result_decides() -> None:
    table = _table(A, B)
    assert table.snapshot() == {A: PENDING, B: PENDING}
    assert table.record(A, PASS) == HealthChange(A, PENDING, HEALTHY)
    assert table.record(B, FAIL) == HealthChange(B, PENDING, UNHEALTHY)


def test_unhealthy_after_threshold_failures_in_a_row() -> None:
    table = _table(A, unhealthy=3)
    H, U = HEALTHY, UNHEALTHY
    # A pass in between restarts the count: two failures, a pass, then three failures.
    assert _trace(table, A, "+--+---") == [H, H, H, H, H, H, U]


def test_healthy_again_after_threshold_passes_in_a_row() -> None:
    table = _table(A, healthy=2)
    H, U = HEALTHY, UNHEALTHY
    assert _trace(table, A, "-+-++") == [U, U, U, U, H]


def test_a_threshold_of_one_flips_on_each_result() -> None:
    table = _table(A, unhealthy=1, healthy=1)
    H, U = HEALTHY, UNHEALTHY
    assert _trace(table, A, "+-+-") == [H, U, H, U]


def test_only_state_changes_are_reported() -> None:
    table = _table(A, unhealthy=2)
    changes = [table.record(A, o) for o in (PASS, PASS, FAIL, FAIL, FAIL)]
    assert changes == [
        HealthChange(A, PENDING, HEALTHY),
        None,
        None,
        HealthChange(A, HEALTHY, UNHEALTHY),
        None,
    ]


def test_a_new_endpoint_set_keeps_the_state_of_those_that_remain() -> None:
    table = _table(A, B, unhealthy=1)
    table.record(A, FAIL)
    table.record(B, PASS)
    table.sync([B, C])
    assert table.snapshot() == {B: HEALTHY, C: PENDING}
    # A result for a removed endpoint (its probe finished late) changes nothing.
    assert table.record(A, PASS) is None
    assert A not in table.snapshot()
    # A back again starts over.
    table.sync([A, B, C])
    assert table.health(A) is PENDING


def test_a_new_endpoint_set_keeps_runs_in_progress() -> None:
    table = _table(A, unhealthy=3)
    _trace(table, A, "+--")
    table.sync([A, B])
    assert table.record(A, FAIL) == HealthChange(A, HEALTHY, UNHEALTHY)


def test_only_healthy_endpoints_serve_while_enough_are_healthy() -> None:
    table = _table(A, B, C, D, unhealthy=1)
    for e in (A, B):
        table.record(e, PASS)
    for e in (C, D):
        table.record(e, FAIL)
    assert PANIC_THRESHOLD == 50.0
    assert table.serving() == (A, B)  # 50% healthy: not below the threshold
    assert not table.panicking()


def test_panic_mode_uses_every_endpoint_when_too_few_are_healthy() -> None:
    table = _table(A, B, C, unhealthy=1)
    table.record(A, PASS)
    table.record(B, FAIL)
    table.record(C, FAIL)
    assert table.panicking()
    assert table.serving() == (A, B, C)  # 33% healthy < 50%
    table.record(B, PASS)
    table.record(B, PASS)
    assert table.serving() == (A, B)


def test_before_any_probe_everything_serves() -> None:
    table = _table(A, B)
    assert table.serving() == (A, B)
    table.record(A, PASS)
    assert table.serving() == (A,)  # one of two healthy: the pending one waits for its probe


def test_no_endpoints_serve_none() -> None:
    assert _table().serving() == ()
    assert not _table().panicking()


@given(st.dictionaries(st.integers(1, 40), st.sampled_from(list(EndpointHealth)), max_size=12))
def test_serving_is_never_empty_and_never_unhealthy_outside_panic(
    raw: dict[int, EndpointHealth],
) -> None:
    states = {Endpoint("h", port): health for port, health in raw.items()}
    serving = serving_endpoints(states)
    assert bool(serving) == bool(states)
    healthy = [e for e, h in states.items() if h is HEALTHY]
    if states and 100 * len(healthy) >= PANIC_THRESHOLD * len(states):
        assert list(serving) == healthy
    else:
        assert serving == tuple(states)

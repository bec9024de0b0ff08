"""Property tests for traffic policy: weighted splits, consistent-hash remapping, token buckets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.core.balancer import EndpointState, make_balancer
from metaprotocol.core.config import Endpoint, RouteAction, TokenBucket, WeightedCluster
from metaprotocol.core.filters import TokenBucketState
from metaprotocol.core.routing import pick_cluster


def test_weighted_split_within_tolerance_over_100k_picks() -> None:
    rng = random.Random(42)
    action = RouteAction(
        weighted_clusters=(
            WeightedCluster("a", 70),
            WeightedCluster("b", 20),
            WeightedCluster("c", 10),
        )
    )
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(100_000):
        picked = pick_cluster(action, rng.random)
        assert picked is not None
        counts[picked] += 1
    for name, weight in (("a", 70), ("b", 20), ("c", 10)):
        assert abs(counts[name] / 100_000 - weight / 100) < 0.01, counts


def endpoints(n: int) -> list[EndpointState]:
    return [EndpointState(Endpoint(f"10.0.0.{i}", 9000)) for i in range(1, n + 1)]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
@pytest.mark.parametrize("n", [2, 5, 9])
def test_adding_an_endpoint_remaps_about_one_in_n_plus_one(policy: str, n: int) -> None:
    keys = [f"user:{i}" for i in range(4000)]
    before = make_balancer(policy, endpoints(n), random.random)
    after = make_balancer(policy, endpoints(n + 1), random.random)
    moved = 0
    for key in keys:
        a = before.pick(0.0, key, frozenset())
        b = after.pick(0.0, key, frozenset())
        assert a is not None and b is not None
        moved += a.label != b.label
    assert moved / len(keys) <= 1 / (n + 1) + 0.06, (policy, n, moved)


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_consistent_hash_is_stable_and_skips_ejected(policy: str) -> None:
    eps = endpoints(4)
    bal = make_balancer(policy, eps, random.random)
    first = bal.pick(0.0, "k", frozenset())
    assert first is not None and bal.pick(0.0, "k", frozenset()) is first
    first.ejected_until = 10.0
    other = bal.pick(0.0, "k", frozenset())
    assert other is not None and other is not first
    assert bal.pick(10.0, "k", frozenset()) is first


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request"])
def test_other_policies_spread_and_avoid_excluded(policy: str) -> None:
    rng = random.Random(1)
    eps = endpoints(3)
    bal = make_balancer(policy, eps, rng.random)
    seen = {bal.pick(0.0, None, frozenset()).label for _ in range(60)}  # type: ignore[union-attr]
    assert len(seen) == 3
    for _ in range(20):
        pick = bal.pick(0.0, None, frozenset({eps[0].label}))
        assert pick is not None and pick is not eps[0]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=1, max_value=10),
    st.floats(min_value=0.01, max_value=2.0),
    st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200),
)
def test_token_bucket_never_admits_more_than_burst_plus_rate(
    max_tokens: int, per_fill: int, interval: float, gaps: list[float]
) -> None:
    bucket = TokenBucketState(TokenBucket(max_tokens, per_fill, interval), now=0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)
        assert admitted <= max_tokens + now * per_fill / interval + 1e-9

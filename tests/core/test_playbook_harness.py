"""The Playbook harness itself: mismatches are readable, unfinished playbooks are caught,
placeholders stand for upstream connection ids, and write granularity is not pinned."""

from __future__ import annotations

import pytest

from metaprotocol.core.config import ClusterConfig, Endpoint
from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.testing.playbook import (
    ANY,
    Playbook,
    PlaybookError,
    placeholder,
    unfinished_playbooks,
)

from .helpers import UP, config, playbook, req, resp

OTHER = ("10.0.0.2", 9000)


def test_mismatch_shows_the_trace_side_by_side() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    with pytest.raises(PlaybookError) as info:
        pb << Write(1, b"nope")
    text = str(info.value)
    assert ">> Accepted(conn=1" in text
    assert "!! expected Write(conn=1, data=b'nope')" in text
    assert "got OpenUpstream(conn=-1" in text
    pb << OpenUpstream(-1, *UP)


def test_any_matches_a_field() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, ANY, ANY)


def test_a_playbook_left_with_unexpected_outputs_is_reported() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))  # OpenUpstream never expected
    problems = unfinished_playbooks()
    assert len(problems) == 1 and "OpenUpstream(conn=-1" in problems[0]
    assert unfinished_playbooks() == []  # reported once
    pb.pending.clear()


# -- placeholders for upstream connection ids ------------------------------------------------


def _two_requests_on_two_endpoints() -> Playbook:
    """Two clients whose requests go to two endpoints: two upstream connections."""
    clusters = (ClusterConfig("main", (Endpoint(*UP), Endpoint(*OTHER))),)
    return playbook(config(clusters=clusters))


def test_a_placeholder_binds_on_open_upstream_and_is_used_after() -> None:
    pb = playbook()
    up = placeholder("up")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    assert up.bound and up.value == -1  # the id the core chose
    pb >> UpstreamConnected(up)  # fed with the bound id
    pb << Write(up, req(1))
    pb >> DataReceived(up, resp(1))
    pb << Write(1, resp(1))
    pb >> Closed(1) >> Closed(up)
    pb.assert_clean()


def test_placeholders_bind_to_distinct_connections() -> None:
    pb = _two_requests_on_two_endpoints()
    first, second = placeholder("first"), placeholder("second")
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(first, ANY, ANY)
    pb >> DataReceived(2, req(2))
    pb << OpenUpstream(second, ANY, ANY)
    assert {first.value, second.value} == {-1, -2}
    pb >> UpstreamConnected(second)
    pb << Write(second, req(2))
    pb >> UpstreamConnected(first)
    pb << Write(first, req(1))


def test_a_bound_placeholder_must_match_and_says_so() -> None:
    pb = _two_requests_on_two_endpoints()
    first, second = placeholder("first"), placeholder("second")
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(first, ANY, ANY)
    pb >> DataReceived(2, req(2))
    pb << OpenUpstream(second, ANY, ANY)
    pb >> UpstreamConnected(second)
    with pytest.raises(PlaybookError) as info:
        pb << Write(first, req(2))  # the write goes to the other connection
    text = str(info.value)
    assert "!! expected Write(conn=<first=-1>, data=" in text
    assert "got Write(conn=-2, data=" in text
    pb << Write(second, req(2))  # the output is still there after the mismatch


def test_a_mismatch_binds_nothing() -> None:
    pb = playbook()
    up = placeholder("up")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    with pytest.raises(PlaybookError, match=r"expected OpenUpstream\(conn=<up>, host='10.9.9.9'"):
        pb << OpenUpstream(up, "10.9.9.9", 9000)
    assert not up.bound
    pb << OpenUpstream(up, *UP)
    assert up.value == -1


def test_two_placeholders_cannot_hold_one_connection() -> None:
    pb = playbook()
    up, again = placeholder("up"), placeholder("again")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    with pytest.raises(PlaybookError, match="placeholder 'again' to -1, which placeholder 'up'"):
        pb << Write(again, req(1))
    pb << Write(up, req(1))


def test_feeding_an_unbound_placeholder_fails_clearly() -> None:
    pb = playbook()
    up = placeholder("up")
    pb >> Accepted(1, "main")
    with pytest.raises(PlaybookError, match=r"placeholder 'up' is not bound \(expect the output"):
        pb >> UpstreamConnected(up)
    with pytest.raises(PlaybookError, match="not bound yet"):
        up.value  # noqa: B018


# -- write granularity -----------------------------------------------------------------------


def _answered_twice() -> Playbook:
    """Two pipelined requests whose two answers arrive in one read: two writes to client 1."""
    pb = playbook()
    up = placeholder("up")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1) + req(2))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2))
    pb >> DataReceived(up, resp(2) + resp(1))
    return pb


def test_consecutive_writes_to_one_connection_compare_as_one() -> None:
    pb = _answered_twice()
    pb << Write(1, resp(2) + resp(1))
    pb << None


def test_a_merged_write_can_still_be_expected_in_pieces() -> None:
    pb = _answered_twice()
    pb << Write(1, resp(2))
    pb << Write(1, resp(1))
    pb << None


def test_take_and_any_see_the_merged_write() -> None:
    pb = _answered_twice()
    assert pb.take() == Write(1, resp(2) + resp(1))
    pb = _answered_twice()
    pb << Write(1, ANY)
    pb << None


def test_a_write_with_other_bytes_still_fails_clearly() -> None:
    pb = _answered_twice()
    with pytest.raises(PlaybookError) as info:
        pb << Write(1, resp(1) + resp(2))  # the answers in the wrong order
    text = str(info.value)
    assert "!! expected Write(conn=1, data=" in text and "got Write(conn=1, data=" in text
    pb << Write(1, resp(2))
    with pytest.raises(PlaybookError, match=r"expected Write\(conn=1, data=b'nope'\)"):
        pb << Write(1, b"nope")  # the rest of the merged write is what is left
    pb << Write(1, resp(1))
    with pytest.raises(PlaybookError, match=r"expected Write.*but nothing was emitted"):
        pb << Write(1, resp(1))  # more bytes than were written


def test_writes_to_different_connections_are_not_merged() -> None:
    pb = playbook()
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(up := placeholder("up"), *UP)
    pb >> DataReceived(2, req(2))
    pb >> UpstreamConnected(up)
    pb << Write(up, req(1) + req(2))
    pb >> DataReceived(up, resp(2) + resp(1))  # one answer for each client
    pb << Write(2, resp(2))
    pb << Write(1, resp(1))
    pb << None

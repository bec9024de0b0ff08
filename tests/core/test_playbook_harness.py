"""The Playbook harness itself: mismatches are readable and unfinished playbooks are caught."""

from __future__ import annotations

import pytest

from metaprotocol.core.events import Accepted, DataReceived
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.testing.playbook import ANY, PlaybookError, unfinished_playbooks

from .helpers import UP, playbook, req


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

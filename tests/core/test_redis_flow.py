"""Playbooks with the real Redis codec: HELLO answered by the proxy, RESP3 clients on
upstream connections of their own, refused commands answered in order."""

from __future__ import annotations

from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.testing import placeholder

from .helpers import UP, cmd, config, playbook

HELLO3_REPLY_HEAD = b"%7\r\n$6\r\nserver\r\n$12\r\nmetaprotocol\r\n"


def test_resp3_client_gets_its_own_upstream_connection_opened_with_hello() -> None:
    pb = playbook(config(codec="redis"))
    resp3, resp2 = placeholder("resp3"), placeholder("resp2")  # the two upstream connections
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, cmd("HELLO", "3"))
    hello = pb.take()
    assert isinstance(hello, Write) and hello.data.startswith(HELLO3_REPLY_HEAD)
    assert b"$5\r\nproto\r\n:3\r\n" in hello.data
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(resp3, *UP)
    pb >> DataReceived(2, cmd("GET", "b"))  # a RESP2 client: not the RESP3 connection
    pb << OpenUpstream(resp2, *UP)
    pb >> UpstreamConnected(resp3)
    pb << Write(resp3, cmd("HELLO", "3") + cmd("GET", "a"))
    pb >> UpstreamConnected(resp2)
    pb << Write(resp2, cmd("GET", "b"))
    pb >> DataReceived(resp3, b"%1\r\n+server\r\n+redis\r\n")  # the HELLO reply is swallowed
    pb << None
    pb >> DataReceived(resp3, b"$1\r\nA\r\n")
    pb << Write(1, b"$1\r\nA\r\n")
    pb >> DataReceived(resp2, b"$1\r\nB\r\n")
    pb << Write(2, b"$1\r\nB\r\n")
    for conn in (1, 2, resp3, resp2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_local_answers_wait_for_earlier_replies() -> None:
    pb = playbook(config(codec="redis"))
    up = placeholder("up")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "a") + cmd("MULTI") + cmd("HELLO", "2") + cmd("GET", "b"))
    pb << OpenUpstream(up, *UP)
    pb >> UpstreamConnected(up)
    pb << Write(up, cmd("GET", "a") + cmd("GET", "b"))
    pb >> DataReceived(up, b"$1\r\nA\r\n")
    answers = pb.take()
    assert isinstance(answers, Write)
    assert answers.data.startswith(b"$1\r\nA\r\n-ERR command MULTI is not supported")
    assert answers.data.endswith(b"$7\r\nmodules\r\n*0\r\n")  # the RESP2 HELLO answer
    pb >> DataReceived(up, b"$1\r\nB\r\n")
    pb << Write(1, b"$1\r\nB\r\n")
    for conn in (1, up):
        pb >> Closed(conn)
    pb.assert_clean()


def test_client_setinfo_is_acknowledged_locally() -> None:
    pb = playbook(config(codec="redis"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-py"))
    pb << Write(1, b"+OK\r\n")
    pb >> DataReceived(1, cmd("CLIENT", "KILL", "ID", "7"))
    pb << Write(1, b"-ERR command CLIENT is not supported by the proxy: "
                   b"it changes connection state shared with other clients\r\n")  # fmt: skip
    pb >> Closed(1)
    pb.assert_clean()

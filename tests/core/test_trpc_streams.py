"""Playbooks for tRPC streams through the core: INIT routes, the rest follows, every end frees.

Stream ids collide across clients and are rewritten like request ids; DATA and FEEDBACK
frames go to the INIT's upstream connection and come back with the client's id; a CLOSE or
a failed INIT answer from the server, and a reset from the client, free the stream's state.
"""

from __future__ import annotations

from metaprotocol.codecs.protobuf import encode_len_field, encode_varint_field
from metaprotocol.codecs.trpc import build_close, build_frame, build_request, build_response
from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing import Playbook
from tests.core.helpers import UP, config, route

FUNC = "/trpc.test.stream.Echo/Chat"


def init(sid: int, func: str = FUNC) -> bytes:
    meta = encode_len_field(1, encode_len_field(3, func.encode()))
    return build_frame(1, 1, sid, b"", meta + encode_varint_field(3, 65536))


def init_answer(sid: int, ret: int = 0) -> bytes:
    response_meta = encode_varint_field(1, ret) if ret else b""
    return build_frame(1, 1, sid, b"", encode_len_field(2, response_meta))


def data(sid: int, payload: bytes) -> bytes:
    return build_frame(1, 2, sid, b"", payload)


def feedback(sid: int, increment: int) -> bytes:
    return build_frame(1, 3, sid, b"", encode_varint_field(1, increment))


def playbook() -> Playbook:
    return Playbook(Proxy(config(codec="trpc", routes=(route(func=FUNC),)), now=0.0))


def live(pb: Playbook) -> int:
    return pb.proxy.request_count()


def test_streams_follow_their_init_and_a_server_close_frees_them() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, init(100))
    pb << OpenUpstream(-1, *UP)
    pb >> DataReceived(2, init(100))  # the same stream id from another client
    pb >> UpstreamConnected(-1)
    pb << Write(-1, init(100) + init(1))
    pb >> DataReceived(2, data(100, b"two") + feedback(100, 4096))
    pb << Write(-1, data(1, b"two"))
    pb << Write(-1, feedback(1, 4096))  # window updates pass through, renumbered
    pb >> DataReceived(-1, init_answer(1) + data(1, b"to two") + feedback(100, 1024))
    pb << Write(2, init_answer(100))
    pb << Write(2, data(100, b"to two"))
    pb << Write(1, feedback(100, 1024))
    pb >> DataReceived(2, build_close(100))  # the client half-closes: the stream lives on
    pb << Write(-1, build_close(1))
    assert live(pb) == 4  # two streams, each held by its client and the upstream connection
    pb >> DataReceived(-1, build_close(1) + build_close(100))
    pb << Write(2, build_close(100))
    pb << Write(1, build_close(100))
    assert live(pb) == 0
    pb >> DataReceived(1, build_close(100))  # a close after the server's: nothing to do
    pb << None
    pb >> DataReceived(-1, data(100, b"late"))  # a frame for a stream that ended: dropped
    pb << None
    for conn in (1, 2, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_client_reset_frees_the_stream_at_once() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, init(7))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, init(7))
    reset = build_close(7, reset=True, ret=1, msg="bye")
    pb >> DataReceived(1, reset)
    pb << Write(-1, reset)
    assert live(pb) == 0
    pb >> DataReceived(-1, data(7, b"after the reset"))  # the server had sent it already
    pb << None
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_refused_init_ends_the_stream_and_unary_calls_share_the_connection() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, init(3) + build_request(3, FUNC, b"unary"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    # The unary call's id collides with the stream's on the shared connection: renumbered.
    pb << Write(-1, init(3) + build_request(1, FUNC, b"unary"))
    pb >> DataReceived(-1, init_answer(3, ret=12) + build_response(1, b"done"))
    pb << Write(1, init_answer(3, ret=12))
    pb << Write(1, build_response(3, b"done"))
    assert live(pb) == 0
    pb >> DataReceived(1, data(3, b"too late"))  # not a known stream: a tRPC error answer
    pb << Write(1, build_response(0, ret=1, error_msg="frame for unknown stream"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_an_unrouted_stream_is_reset_with_the_reason() -> None:
    pb = playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, init(9, "/trpc.other.Svc/Method"))
    pb << Write(1, build_close(9, reset=True, ret=11, msg="no route matched"))
    pb >> DataReceived(1, build_request(4, "/nope.X/Y"))
    pb << Write(1, build_response(4, ret=11, error_msg="no route matched"))
    pb >> Closed(1)
    pb.assert_clean()

"""A codec that raises something other than ProtocolError (a bug in a plugged-in codec) on
the data path: the request in hand still gets exactly one answer, the stream whose framing
can no longer be trusted closes, the failure is counted, and nothing else is disturbed."""

from __future__ import annotations

from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.config import Config
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    UpstreamConnected,
)
from metaprotocol.core.message import ErrorType, Message, Mutation, NeedData
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing import Playbook

from .helpers import UP, config, error_reply, ping, pong, req, resp, route


class BuggyCodec(LengthPrefixedCodec):
    """The tutorial codec with a bug: it crashes on bodies that ask it to."""

    name = "buggy"

    def decode(self, buffer: bytearray) -> Message | NeedData:
        side = "down" if self.side is Side.DOWNSTREAM else "up"
        if f"crash-{side}-decode".encode() in buffer:
            raise KeyError("bug")
        return super().decode(buffer)

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        side = "down" if self.side is Side.DOWNSTREAM else "up"
        if f"crash-{side}-encode".encode() in message.frame:
            raise IndexError("bug")
        return super().encode(message, request_id=request_id, mutation=mutation)

    def decode_eof(self, buffer: bytearray) -> Message | None:
        if b"crash-up-eof" in buffer:
            raise RuntimeError("bug")
        return None

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        if heartbeat.request_id == 99:
            raise AttributeError("bug")
        return super().encode_heartbeat_reply(heartbeat)

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        if request is not None and b"crash-error-reply" in request.frame:
            raise ValueError("bug")
        return super().encode_error(request, error, detail)


def buggy_playbook() -> Playbook:
    cfg: Config = config(codec="buggy")
    return Playbook(Proxy(cfg, now=0.0, codecs={"buggy": BuggyCodec}))


def failed(rid: int, error: ErrorType, detail: str) -> bytes:
    """The tutorial codec's error reply (its status is the error's place in ErrorType)."""
    return error_reply(rid, error.value, detail, list(ErrorType).index(error) + 1)


def codec_errors(pb: Playbook) -> int:
    return pb.proxy.stats.counter("codec_error")


def test_a_request_the_codec_crashes_on_is_answered_and_its_connection_closed() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(7, b"crash-down-decode"))
    pb << Write(1, failed(0, ErrorType.UNSPECIFIED, "buggy codec failed to decode: KeyError"))
    pb << CloseConnection(1)
    # Another client is not disturbed.
    pb >> DataReceived(2, req(8))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(8))
    pb >> DataReceived(-1, resp(8))
    pb << Write(2, resp(8))
    assert codec_errors(pb) == 1
    for conn in (2, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_request_the_codec_cannot_encode_upstream_is_answered() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7, b"crash-up-encode") + req(8))
    pb << OpenUpstream(-1, *UP)
    pb << Write(1, failed(7, ErrorType.UNSPECIFIED, "buggy codec failed to encode: IndexError"))
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(8))
    pb >> DataReceived(-1, resp(8))
    pb << Write(1, resp(8))
    assert codec_errors(pb) == 1
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_response_the_codec_crashes_on_closes_the_upstream_and_answers_its_requests() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7) + req(8))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(7) + req(8))
    pb >> DataReceived(-1, resp(7, b"crash-up-decode"))
    pb << CloseConnection(-1, flush=False)
    detail = "buggy codec failed to decode: KeyError"
    pb << Write(1, failed(7, ErrorType.BAD_RESPONSE, detail))
    pb << Write(1, failed(8, ErrorType.BAD_RESPONSE, detail))
    assert codec_errors(pb) == 1
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_response_the_codec_cannot_encode_for_the_client_is_answered() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(7))
    pb >> DataReceived(-1, resp(7, b"crash-down-encode"))
    detail = "buggy codec failed to encode the response"
    pb << Write(1, failed(7, ErrorType.UNSPECIFIED, detail))
    # The upstream connection is fine: its next answer goes through.
    pb >> DataReceived(1, req(8))
    pb << Write(-1, req(8))
    pb >> DataReceived(-1, resp(8))
    pb << Write(1, resp(8))
    assert codec_errors(pb) == 1
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_codec_that_cannot_build_an_error_reply_closes_the_connection() -> None:
    # No route for the request, and the codec crashes building the 404: the client is
    # closed (as for a protocol with no error reply) rather than left waiting.
    pb = Playbook(
        Proxy(config((route(tenant="a"),), codec="buggy"), now=0.0, codecs={"buggy": BuggyCodec})
    )
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7, b"crash-error-reply", tenant="b"))
    pb << CloseConnection(1)
    assert codec_errors(pb) == 1
    pb >> Closed(1)
    pb.assert_clean()


def test_a_codec_crashing_on_an_upstream_close_still_answers_what_it_owed() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(7))
    pb >> DataReceived(-1, resp(7, b"crash-up-eof, then more")[:-1])  # not a whole frame yet
    pb >> EofReceived(-1)
    pb << CloseConnection(-1, flush=False)
    pb << Write(1, failed(7, ErrorType.UPSTREAM_RESET, "upstream connection closed"))
    assert codec_errors(pb) == 1
    pb >> Closed(1)
    pb.assert_clean()


def test_a_heartbeat_the_codec_cannot_answer_is_dropped_and_the_next_one_answered() -> None:
    pb = buggy_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, ping(99))
    pb >> DataReceived(1, ping(5))
    pb << Write(1, pong(5))
    assert codec_errors(pb) == 1
    pb >> Closed(1)
    pb.assert_clean()

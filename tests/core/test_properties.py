"""Property tests: stream splitting never changes what the core does; garbage never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import Decoded, Output, Write
from metaprotocol.core.proxy import Proxy

from .helpers import config, ping, req, resp

REQUESTS = [req(1, b"a", method="x"), ping(2), req(3, b"bcd"), req(4, method="y" * 40)]


def run(chunks: list[bytes]) -> tuple[list[Output], list[Output]]:
    """Feed the client's bytes in ``chunks``; answer every request; return what came out."""
    proxy = Proxy(config(), now=0.0)
    decoded: list[Output] = []
    replies: list[Output] = []
    proxy.handle(Accepted(1, "main"), 0.0)
    proxy.handle(UpstreamConnected(-1), 0.0)
    for chunk in chunks:
        for out in proxy.handle(DataReceived(1, chunk), 0.0):
            if isinstance(out, Decoded):
                decoded.append(out)
            elif isinstance(out, Write) and out.conn == 1:
                replies.append(out)
    answers = b"".join(resp(rid, b"ok") for rid in (1, 3, 4))
    for out in proxy.handle(DataReceived(-1, answers), 0.0):
        if isinstance(out, Write) and out.conn == 1:
            replies.append(out)
    proxy.handle(Closed(1), 0.0)
    proxy.handle(Closed(-1), 0.0)
    assert proxy.connection_count() == 0 and proxy.request_count() == 0
    return decoded, replies


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=sum(len(r) for r in REQUESTS)), max_size=12))
def test_random_splits_give_the_same_requests_and_replies(cuts: list[int]) -> None:
    stream = b"".join(REQUESTS)
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert run([c for c in chunks if c]) == run([stream])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans())
def test_random_bytes_never_make_handle_raise(chunks: list[bytes], from_upstream: bool) -> None:
    proxy = Proxy(config(max_message_size=256), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    proxy.handle(DataReceived(1, req(1)), 0.0)
    proxy.handle(UpstreamConnected(-1), 0.0)
    target = -1 if from_upstream else 1
    for chunk in chunks:
        proxy.handle(DataReceived(target, chunk), 0.0)
    proxy.handle(Closed(1), 1.0)
    proxy.handle(Closed(-1), 1.0)
    assert proxy.connection_count() == 0
    assert proxy.request_count() == 0

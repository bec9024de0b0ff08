"""HTTP/1.1 harnesses: requests decoded downstream, responses decoded upstream, with the fast
parser and the h11 reference parser.

Request selector: bit 0 the h11 parser, bit 1 a small ``max_message_size`` (512 bytes
instead of 64 KiB). Response selector: bit 0 the h11 parser, bits 1-2 how many requests
are waiting for their responses (1-4), bits 3-6 which of them are HEAD requests, bit 7
HTTP/1.0 requests (the client's answer then says keep-alive).
"""

from __future__ import annotations

from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, Mutation, ProtocolError

from .common import DATA_DIR, Finding, check_encodes, check_error, drive, split_input

__all__ = ["request", "request_seeds", "response", "response_seeds"]

MUTATION = Mutation(add=(("x-fuzz", "1"),), remove=("user-agent",))


def _parser(selector: int) -> dict[str, str]:
    return {"parser": "h11" if selector & 1 else "fast"}


def _decode_request(options: dict[str, str], frame: bytes) -> Message | None:
    try:
        result = Http1Codec(Side.DOWNSTREAM, options, 1 << 20).decode(bytearray(frame))
    except ProtocolError as exc:
        check_error(exc)
        return None
    return None if result is NEED_DATA else result


def request(data: bytes) -> None:
    selector, chunk, wire = split_input(data)
    options = _parser(selector)
    limit = 512 if selector & 2 else 64 * 1024
    codec = Http1Codec(Side.DOWNSTREAM, options, limit)

    def on_message(message: Message) -> None:
        upstream = Http1Codec(Side.UPSTREAM, options, limit)
        check_encodes(upstream, message, passthrough=False)
        try:
            mutated = upstream.encode(message, mutation=MUTATION)
        except ProtocolError as exc:
            check_error(exc)
            return
        again = _decode_request(options, mutated)
        if again is None or again.properties.get("x-fuzz") != "1":
            raise Finding(f"a mutated request does not decode with its new field: {mutated!r}")

    drive(codec, wire, chunk, limit, on_message=on_message)


def response(data: bytes) -> None:
    selector, chunk, wire = split_input(data)
    options = _parser(selector)
    codec = Http1Codec(Side.UPSTREAM, options, 64 * 1024)
    version = b"1.0" if selector & 128 else b"1.1"
    for index in range(1 + (selector >> 1 & 3)):
        method = b"HEAD" if selector >> (3 + index) & 1 else b"GET"
        head = method + b" /%d HTTP/" % index + version + b"\r\nHost: fuzz\r\n\r\n"
        pending = _decode_request(options, head)
        if pending is None:
            raise Finding(f"the harness's own request did not decode: {head!r}")
        codec.encode(pending)
    downstream = Http1Codec(Side.DOWNSTREAM, options, 64 * 1024)

    def on_message(message: Message) -> None:
        check_encodes(downstream, message, passthrough=False)

    # The codec drops interim (1xx) responses as they come, even when it then needs data.
    drive(codec, wire, chunk, 64 * 1024, on_message=on_message, drops=True)


REQUESTS = [
    (DATA_DIR / "http1_curl_post.bin").read_bytes(),
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"DELETE /k HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nKeep-Alive: 5\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
]


def request_seeds() -> list[bytes]:
    return [bytes([s, c]) + r for r in REQUESTS for s, c in ((0, 0), (1, 0), (0, 7), (3, 1))]


def response_seeds() -> list[bytes]:
    # One pending GET, two, and a HEAD first; with each parser.
    return [bytes([s, c]) + r for r in RESPONSES for s, c in ((0, 0), (1, 0), (2, 5), (11, 0))]

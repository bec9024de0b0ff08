"""A test ADS server on grpcio and xds-protos' generated servicer (no code of the proxy).

``push(type_url, version, messages)`` sends a state-of-the-world response on every open
stream and returns its nonce; ``reply(nonce)`` waits for the DiscoveryRequest answering it
(an ACK, or a NACK with ``error_detail``). ``stop()`` ends the server and its streams;
``start()`` serves again on the same port with the resources it had.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

__all__ = ["ControlPlane"]

_DEADLINE = 20.0


class ControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.port = 0
        self._cond = threading.Condition()
        self._resources: dict[str, tuple[str, list[Message], str]] = {}  # type -> ver, msgs, nonce
        self._streams: list[queue.Queue[str | None]] = []
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self._nonces = itertools.count(1)
        self._server: Any = None

    def start(self) -> None:
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self) -> None:
        with self._cond:
            for q in self._streams:
                q.put(None)
        self._server.stop(0).wait(_DEADLINE)

    # -- what the tests call

    def push(self, type_url: str, version: str, messages: Sequence[Message]) -> str:
        with self._cond:
            nonce = str(next(self._nonces))
            self._resources[type_url] = (version, list(messages), nonce)
            for q in self._streams:
                q.put(type_url)
        return nonce

    def reply(self, nonce: str) -> discovery_pb2.DiscoveryRequest:
        """The request that answers the response with ``nonce`` (ACK or NACK)."""
        end = time.monotonic() + _DEADLINE
        with self._cond:
            while True:
                for request in self.requests:
                    if request.response_nonce == nonce:
                        return request
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply to nonce {nonce}")
                self._cond.wait(left)

    def streams(self) -> int:
        with self._cond:
            return len(self._streams)

    # -- the servicer

    def StreamAggregatedResources(
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        out: queue.Queue[str | None] = queue.Queue()
        with self._cond:
            self._streams.append(out)
        context.add_callback(lambda: out.put(None))

        def read() -> None:
            try:
                for request in request_iterator:
                    with self._cond:
                        self.requests.append(request)
                        self._cond.notify_all()
                        first = not request.response_nonce
                    if first and request.type_url in self._resources:
                        out.put(request.type_url)  # a new subscription gets what there is
            except grpc.RpcError:
                pass
            finally:
                out.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            while (type_url := out.get()) is not None:
                with self._cond:
                    version, messages, nonce = self._resources[type_url]
                resources = []
                for m in messages:
                    packed = AnyProto()
                    packed.Pack(m)
                    resources.append(packed)
                yield discovery_pb2.DiscoveryResponse(
                    version_info=version, resources=resources, type_url=type_url, nonce=nonce
                )
        finally:
            with self._cond:
                self._streams.remove(out)

"""Active health probes: one probe connection per endpoint, driven by events and time.

The engine hands ``HealthProber`` the clusters that have a ``health_check`` (``configure``),
routes the events of the connections it owns to it (``owns``), calls ``tick`` when time
passes and asks ``next_deadline``; every call returns the instructions to carry out
(``OpenUpstream``, ``Write``, ``CloseConnection``). Results go into each cluster's
``HealthTable`` (core/health.py); the changes they make wait in ``changes`` for the engine.

Rules for one endpoint's probe session:

| state | input | effect, next state |
|---|---|---|
| IDLE, no connection | probe due | open a connection, CONNECTING (the timeout runs from here) |
| IDLE, connection kept | probe due | write the probe, WAITING |
| CONNECTING | connected, codec probes | write the preamble (login) if any and the probe, WAITING |
| CONNECTING | connected, no probe hook | **pass**, close, IDLE |
| CONNECTING | connect failed | **fail**, IDLE |
| WAITING | a message the codec answers (a provider's heartbeat) | reply, stay WAITING |
| WAITING | the answer | **pass** or **fail** (``probe_ok``), IDLE, connection kept |
| WAITING | undecodable bytes, or closed | **fail**, close, IDLE |
| CONNECTING, WAITING | timeout | **fail**, close, IDLE |
| IDLE, connection kept | closed by the peer | IDLE without connection (no verdict) |
| IDLE, connection kept | bytes that are no heartbeat | close, IDLE without connection |

Probes of an endpoint start every ``interval`` (from the previous start), the first at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from metaprotocol.core.codec import (
    Codec,
    CodecFactory,
    OpensWithPreamble,
    ProbesHealth,
    Side,
    capabilities_of,
)
from metaprotocol.core.config import ClusterConfig, Endpoint, HealthCheck
from metaprotocol.core.health import HealthChange, HealthTable, ProbeOutcome
from metaprotocol.core.message import NEED_DATA, MessageType, ProtocolError
from metaprotocol.core.outputs import CloseConnection, Instruction, OpenUpstream, Write

__all__ = ["HealthProber", "ProbeCounters", "ProbeTarget"]


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A cluster to probe: its config, its endpoints now (DNS may have changed them) and
    the codec of the listeners that route to it (None: connect only)."""

    cluster: ClusterConfig
    endpoints: tuple[Endpoint, ...]
    codec: CodecFactory | None = None
    codec_options: Mapping[str, Any] = field(default_factory=dict)
    max_message_size: int = 8 * 1024 * 1024

    def same_probe(self, other: ProbeTarget) -> bool:
        """Whether ``other`` probes the same way (sessions and health may carry over)."""
        a, b = self.cluster, other.cluster
        return (
            a.health_check == b.health_check
            and a.tls == b.tls
            and a.auth == b.auth
            and self.codec is other.codec
            and dict(self.codec_options) == dict(other.codec_options)
            and self.max_message_size == other.max_message_size
        )


class _Phase(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    WAITING = "waiting"


@dataclass(slots=True)
class ProbeCounters:
    """Per cluster: probes started, passed and failed."""

    attempts: int = 0
    passed: int = 0
    failed: int = 0


class _Session:
    """One endpoint's probe connection and where its current probe is."""

    __slots__ = (
        "buffer",
        "codec",
        "conn",
        "connected",
        "deadline",
        "endpoint",
        "next_probe",
        "phase",
    )

    def __init__(self, endpoint: Endpoint, now: float) -> None:
        self.endpoint = endpoint
        self.phase = _Phase.IDLE
        self.conn: int | None = None
        self.connected = False
        self.codec: Codec | None = None
        self.buffer = bytearray()
        self.next_probe = now  # the first probe is due at once
        self.deadline = 0.0  # while CONNECTING or WAITING: when the probe fails


class _ClusterProbes:
    """The probe sessions and the health table of one cluster."""

    def __init__(self, target: ProbeTarget, now: float) -> None:
        check = target.cluster.health_check
        assert check is not None
        self.target = target
        self.check: HealthCheck = check
        self.table = HealthTable(check, target.endpoints)
        self.counters = ProbeCounters()
        caps = None if target.codec is None else capabilities_of(target.codec)
        self.probes = caps is not None and caps.probe  # else: connect only
        self.preamble = caps is not None and caps.preamble
        self.sessions = {e: _Session(e, now) for e in target.endpoints}


class HealthProber:
    """Probes the endpoints of every cluster with a ``health_check`` (see the module rules).

    ``new_conn`` gives a fresh upstream connection id (the engine's id space)."""

    def __init__(self, new_conn: Callable[[], int]) -> None:
        self._new_conn = new_conn
        self._clusters: dict[str, _ClusterProbes] = {}
        self._by_conn: dict[int, tuple[_ClusterProbes, _Session]] = {}
        self.changes: list[tuple[str, HealthChange]] = []  # (cluster, change), for the engine

    # -- configuration

    def configure(self, targets: Mapping[str, ProbeTarget], now: float) -> list[Instruction]:
        """Probe exactly ``targets`` (cluster name -> target) from now on. A cluster probed
        the same way keeps its health and the sessions of the endpoints that remain; the
        probe connections of anything else close."""
        out: list[Instruction] = []
        old = self._clusters
        self._clusters = {}
        for name, target in targets.items():
            if target.cluster.health_check is None:
                continue
            prior = old.pop(name, None)
            if prior is not None and prior.target.same_probe(target):
                prior.target = target
                prior.table.sync(target.endpoints)
                kept: dict[Endpoint, _Session] = {}
                for endpoint in target.endpoints:
                    session = prior.sessions.pop(endpoint, None)
                    kept[endpoint] = session or _Session(endpoint, now)
                for gone in prior.sessions.values():
                    self._drop(gone, out)
                prior.sessions = kept
                self._clusters[name] = prior
            else:
                if prior is not None:
                    old[name] = prior  # closed below
                self._clusters[name] = _ClusterProbes(target, now)
        for probes in old.values():
            for session in probes.sessions.values():
                self._drop(session, out)
        return out

    def table(self, cluster: str) -> HealthTable | None:
        probes = self._clusters.get(cluster)
        return None if probes is None else probes.table

    def counters(self, cluster: str) -> ProbeCounters | None:
        probes = self._clusters.get(cluster)
        return None if probes is None else probes.counters

    # -- the engine's questions

    def owns(self, conn: int) -> bool:
        return conn in self._by_conn

    def next_deadline(self) -> float | None:
        best: float | None = None
        for probes in self._clusters.values():
            for s in probes.sessions.values():
                when = s.next_probe if s.phase is _Phase.IDLE else s.deadline
                if best is None or when < best:
                    best = when
        return best

    # -- inputs

    def tick(self, now: float) -> list[Instruction]:
        """Fail probes past their timeout; start the probes that are due."""
        out: list[Instruction] = []
        for probes in self._clusters.values():
            for s in probes.sessions.values():
                if s.phase is not _Phase.IDLE and s.deadline <= now:
                    self._verdict(probes, s, ProbeOutcome.FAILED, out, close=True)
                if s.phase is _Phase.IDLE and s.next_probe <= now:
                    self._start(probes, s, now, out)
        return out

    def connected(self, conn: int, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        probes, s = self._by_conn[conn]
        s.connected = True
        if not probes.probes or s.codec is None:
            self._verdict(probes, s, ProbeOutcome.PASSED, out, close=True)
            return out
        cluster = probes.target.cluster
        first = b""
        if cluster.auth is not None and probes.preamble:
            first = cast(OpensWithPreamble, s.codec).preamble("", cluster.auth)
        out.append(Write(conn, first + self._probe_bytes(probes, s)))
        s.phase = _Phase.WAITING
        return out

    def connect_failed(self, conn: int, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        probes, s = self._by_conn.pop(conn)
        s.conn = None
        s.connected = False
        self._verdict(probes, s, ProbeOutcome.FAILED, out, close=False)
        return out

    def closed(self, conn: int, now: float) -> list[Instruction]:
        """The probe connection is gone (``Closed`` or ``EofReceived``)."""
        out: list[Instruction] = []
        probes, s = self._by_conn[conn]
        if s.phase is _Phase.IDLE:
            self._drop(s, out)
        else:
            self._verdict(probes, s, ProbeOutcome.FAILED, out, close=True)
        return out

    def data(self, conn: int, data: bytes, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        probes, s = self._by_conn[conn]
        codec = s.codec
        if codec is None:
            return out  # a connect-only probe: whatever the server says does not matter
        s.buffer += data
        while s.conn == conn and s.buffer:
            try:
                message = codec.decode(s.buffer)
            except ProtocolError:
                self._verdict(probes, s, ProbeOutcome.FAILED, out, close=True)
                return out
            if message is NEED_DATA:
                return out
            if message.type is MessageType.HEARTBEAT:
                reply = codec.encode_heartbeat_reply(message)
                if reply is not None:  # the server's own keep-alive, not our answer
                    out.append(Write(conn, reply))
                    continue
            if s.phase is not _Phase.WAITING:
                self._drop(s, out)  # an answer nobody asked for: the stream is not ours
                return out
            ok = cast(ProbesHealth, codec).probe_ok(message)
            outcome = ProbeOutcome.PASSED if ok else ProbeOutcome.FAILED
            self._verdict(probes, s, outcome, out, close=not ok)
        return out

    # -- inside

    def _start(
        self, probes: _ClusterProbes, s: _Session, now: float, out: list[Instruction]
    ) -> None:
        probes.counters.attempts += 1
        s.deadline = now + probes.check.timeout
        s.next_probe = max(s.next_probe + probes.check.interval, now)
        if s.conn is not None and s.connected:
            out.append(Write(s.conn, self._probe_bytes(probes, s)))
            s.phase = _Phase.WAITING
            return
        target = probes.target
        conn = self._new_conn()
        s.conn = conn
        s.connected = False
        s.buffer.clear()
        s.codec = None
        if probes.probes and target.codec is not None:
            s.codec = target.codec(Side.UPSTREAM, target.codec_options, target.max_message_size)
        s.phase = _Phase.CONNECTING
        self._by_conn[conn] = (probes, s)
        endpoint = s.endpoint
        out.append(OpenUpstream(conn, endpoint.host, endpoint.port, target.cluster.tls))

    def _probe_bytes(self, probes: _ClusterProbes, s: _Session) -> bytes:
        assert s.codec is not None
        request = probes.check.request
        if request.host is None:  # HTTP's Host: the endpoint itself
            request = replace(request, host=str(s.endpoint))
        return cast(ProbesHealth, s.codec).probe_request(request)

    def _verdict(
        self,
        probes: _ClusterProbes,
        s: _Session,
        outcome: ProbeOutcome,
        out: list[Instruction],
        *,
        close: bool,
    ) -> None:
        if outcome is ProbeOutcome.PASSED:
            probes.counters.passed += 1
        else:
            probes.counters.failed += 1
        s.phase = _Phase.IDLE
        if close:
            self._drop(s, out)
        change = probes.table.record(s.endpoint, outcome)
        if change is not None:
            self.changes.append((probes.target.cluster.name, change))

    def _drop(self, s: _Session, out: list[Instruction]) -> None:
        """Close the session's connection (if any); its probe, if one runs, is abandoned."""
        if s.conn is not None:
            self._by_conn.pop(s.conn, None)
            out.append(CloseConnection(s.conn, flush=False))
        s.conn = None
        s.connected = False
        s.codec = None
        s.buffer.clear()
        s.phase = _Phase.IDLE

"""Endpoint sets that change while the proxy runs, and active health checks (the facade's
collaborator for both; docs/configuration.md "DNS discovery" and "Active health checks").

- ``endpoints_changed``: a cluster takes a new endpoint set (``EndpointsChanged``, from DNS
  discovery). Endpoints that remain keep their state (pools and warm connections, outlier
  and health state); removed ones take no new request and their pools are retired (their
  connections close once their requests are answered); new ones start fresh. The set is
  remembered, so a reload whose cluster still names the same hosts keeps it (``overlay``).
- Health: a ``HealthProber`` (core/probing.py) probes the endpoints of every cluster with a
  ``health_check`` on connections of its own, with ids far below the engine's upstream ids
  (``owns``). After each result the endpoints the cluster's ``HealthTable`` does not serve
  are marked ``health_excluded``, which the balancers skip (core/balancer.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from metaprotocol.core.balancer import EndpointState, make_balancer
from metaprotocol.core.config import Config, Endpoint
from metaprotocol.core.context import Context
from metaprotocol.core.health import EndpointHealth, HealthChange
from metaprotocol.core.outputs import EndpointHealthChanged
from metaprotocol.core.pools import Pools
from metaprotocol.core.probing import HealthProber, ProbeTarget
from metaprotocol.core.runtime import Runtime
from metaprotocol.core.state import ListenerRuntime
from metaprotocol.core.stats import EndpointStatus

__all__ = ["PROBE_CONN_BASE", "Mesh"]

PROBE_CONN_BASE: Final = -(1 << 40)
"""Probe connections are numbered down from here: never an engine upstream id (those count
down from -1) or an adapter's downstream id (positive)."""


class Mesh:
    """Run-time endpoint sets and active health for one ``Proxy`` (see the module doc)."""

    def __init__(self, ctx: Context, pools: Pools) -> None:
        self.ctx = ctx
        self.pools = pools
        self._next_conn = PROBE_CONN_BASE
        self.prober = HealthProber(self._new_conn)
        # cluster -> (the endpoints its config names, the set discovery found for them)
        self.discovered: dict[str, tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]] = {}
        self.due: float | None = None  # when the prober wants ``tick``

    def _new_conn(self) -> int:
        conn = self._next_conn
        self._next_conn -= 1
        return conn

    # -- configuration ------------------------------------------------------------------------

    def overlay(self, config: Config) -> Config:
        """``config`` with the discovered endpoint set of each ``discovery: dns`` cluster
        that still names the same hosts (a reload must not fall back to the names)."""
        changed = False
        clusters = []
        for cluster in config.clusters:
            found = self.discovered.get(cluster.name)
            if found is not None and cluster.discovery == "dns" and found[0] == cluster.endpoints:
                cluster = replace(cluster, endpoints=found[1])
                changed = True
            clusters.append(cluster)
        self.discovered = {
            c.name: self.discovered[c.name]
            for c in config.clusters
            if c.name in self.discovered and self.discovered[c.name][0] == c.endpoints
        }
        return replace(config, clusters=tuple(clusters)) if changed else config

    def configure(self, now: float) -> None:
        """Probe what the current runtime's clusters ask for (at start, after a reload or a
        new endpoint set) and mark every endpoint's rotation from its health."""
        runtime = self.ctx.runtime
        self.ctx.out.extend(self.prober.configure(_targets(runtime), now))
        for name in runtime.clusters:
            self._mark(name)
        self._settle()

    def endpoints_changed(self, name: str, endpoints: tuple[Endpoint, ...], now: float) -> None:
        cluster = self.ctx.runtime.clusters.get(name)
        if cluster is None or tuple(ep.endpoint for ep in cluster.endpoints) == endpoints:
            return
        names = self.discovered.get(name, (cluster.config.endpoints, ()))[0]
        self.discovered[name] = (names, endpoints)
        before = {ep.endpoint: ep for ep in cluster.endpoints}
        states = []
        for endpoint in dict.fromkeys(endpoints):
            kept = before.pop(endpoint, None)
            states.append(kept if kept is not None else EndpointState(endpoint))
        for gone in before.values():
            for pool in list(gone.pools.values()):
                self.pools.retire(pool)
            gone.pools.clear()
        cluster.endpoints = states
        cluster.config = replace(cluster.config, endpoints=endpoints)
        cluster.balancer = make_balancer(cluster.config.lb_policy, states, self.ctx.random)
        self.configure(now)

    # -- probe connections --------------------------------------------------------------------

    def owns(self, conn: int) -> bool:
        return conn <= PROBE_CONN_BASE and self.prober.owns(conn)

    def connected(self, conn: int, now: float) -> None:
        self.ctx.out.extend(self.prober.connected(conn, now))
        self._settle()

    def connect_failed(self, conn: int, now: float) -> None:
        self.ctx.out.extend(self.prober.connect_failed(conn, now))
        self._settle()

    def ended(self, conn: int, now: float) -> None:
        self.ctx.out.extend(self.prober.closed(conn, now))
        self._settle()

    def data(self, conn: int, data: bytes, now: float) -> None:
        self.ctx.out.extend(self.prober.data(conn, data, now))
        self._settle()

    def tick(self, now: float) -> None:
        if self.due is not None and now >= self.due:
            self.ctx.out.extend(self.prober.tick(now))
            self._settle()

    # -- what the admin shows -----------------------------------------------------------------

    def annotate(self, statuses: list[EndpointStatus]) -> list[EndpointStatus]:
        """``statuses`` with each endpoint's active health, and out of rotation when
        health checking has it out."""
        runtime = self.ctx.runtime
        result = []
        for st in statuses:
            table = self.prober.table(st.cluster)
            cluster = runtime.clusters.get(st.cluster)
            if table is None or cluster is None:
                result.append(st)
                continue
            state = next((ep for ep in cluster.endpoints if ep.label == st.address), None)
            health = None if state is None else table.health(state.endpoint)
            excluded = state is not None and state.health_excluded
            result.append(
                replace(
                    st,
                    healthy=st.healthy and not excluded,
                    health="" if health is None else health.value,
                )
            )
        return result

    # -- inside -------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Apply the health changes the prober made; note when it wants ``tick`` next."""
        changes = self.prober.changes
        if changes:
            touched = set()
            for cluster, change in changes:
                touched.add(cluster)
                self._report(cluster, change)
            changes.clear()
            for cluster in touched:
                self._mark(cluster)
        self.due = self.prober.next_deadline()

    def _mark(self, name: str) -> None:
        cluster = self.ctx.runtime.clusters.get(name)
        if cluster is None:
            return
        table = self.prober.table(name)
        serving = None if table is None else set(table.serving())
        for ep in cluster.endpoints:
            ep.health_excluded = serving is not None and ep.endpoint not in serving

    def _report(self, cluster: str, change: HealthChange) -> None:
        if change.before is EndpointHealth.PENDING and change.after is EndpointHealth.HEALTHY:
            return  # a new endpoint's first good probe: nothing for an operator
        table = self.prober.table(cluster)
        assert table is not None
        check = table.check
        if change.before is EndpointHealth.PENDING:
            probes = 1
        elif change.after is EndpointHealth.HEALTHY:
            probes = check.healthy_threshold
        else:
            probes = check.unhealthy_threshold
        self.ctx.out.append(
            EndpointHealthChanged(cluster, str(change.endpoint), change.after.value, probes)
        )


def _targets(runtime: Runtime) -> dict[str, ProbeTarget]:
    """What to probe: each cluster with a ``health_check``, with the codec of the listeners
    that route to it (the config loader makes them share one; none: connect only)."""
    codecs: dict[str, ListenerRuntime] = {}
    for listener in runtime.listeners.values():
        for route in listener.config.routes:
            action = route.action
            names = [action.cluster] if action.cluster else []
            names += [w.cluster for w in action.weighted_clusters]
            names += [m.cluster for m in action.mirror]
            for name in names:
                codecs.setdefault(name, listener)
    targets = {}
    for name, cluster in runtime.clusters.items():
        if cluster.config.health_check is None:
            continue
        endpoints = tuple(ep.endpoint for ep in cluster.endpoints)
        routed = codecs.get(name)
        if routed is None:
            targets[name] = ProbeTarget(cluster.config, endpoints)
        else:
            lc = routed.config
            targets[name] = ProbeTarget(
                cluster.config,
                endpoints,
                routed.codec_factory,
                lc.codec_options,
                lc.max_message_size,
            )
    return targets

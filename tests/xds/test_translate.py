"""xDS resources -> Config: clusters, endpoints, generic-proxy routes, and what is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from metaprotocol.cli import main
from metaprotocol.configfile import ConfigError, load_config, parse_config
from metaprotocol.configfile.xds import rds_routes, xds_settings
from metaprotocol.core.config import ClusterTls, Endpoint, StringMatcher
from metaprotocol.xds.translate import (
    Resource,
    XdsError,
    XdsResources,
    build_config,
    cluster_config,
    endpoints,
    routes,
)
from tests.xds.resources import (
    METHOD,
    SERVICE,
    action,
    any_of,
    assignment,
    cluster,
    prop,
    route_config,
    single,
)

BASE: dict[str, Any] = {
    "xds": {"address": "127.0.0.1:18000", "node": {"id": "proxy-1", "cluster": "mesh"}},
    "listeners": [
        {"name": "dubbo", "address": "127.0.0.1:0", "codec": "dubbo",
         "routes": {"rds": "dubbo-routes"}},
        {"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
         "routes": [{"route": {"cluster": "static"}}]},
    ],
    "clusters": [{"name": "static", "endpoints": ["127.0.0.1:6379"]}],
}  # fmt: skip


def test_the_loader_reads_xds_and_rds_listeners() -> None:
    config = parse_config(BASE)
    settings = xds_settings(config)
    assert settings is not None
    assert (settings.host, settings.port, settings.node_id, settings.node_cluster) == (
        "127.0.0.1", 18000, "proxy-1", "mesh",
    )  # fmt: skip
    assert rds_routes(config) == {"dubbo": "dubbo-routes"}
    assert config.listeners[0].routes == ()


def test_the_loader_names_the_path_of_each_xds_error() -> None:
    bad = dict(BASE, xds={"address": "nowhere", "node": {"cluster": 3}, "tls": {"ca_file": "/no"},
                          "resources": {"listeners": []}, "extra": 1})  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    text = str(caught.value)
    for expected in (
        "xds.address: ",
        "xds.node.id: missing required key",
        "xds.node.cluster: expected a non-empty string",
        "xds.tls.ca_file: no such file",
        "xds.resources.listeners: unknown key",
        "xds.extra: unknown key",
    ):
        assert expected in text


def test_rds_routes_need_an_xds_block() -> None:
    without = {k: v for k, v in BASE.items() if k != "xds"}
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.routes\.rds: routes from RDS need"):
        parse_config(without)


def test_a_cluster_translates_policy_timeouts_breakers_and_outlier_detection() -> None:
    c = cluster("users", lb=cluster_pb2.Cluster.MAGLEV)
    t = c.circuit_breakers.thresholds.add()
    t.max_connections.value, t.max_requests.value = 7, 99
    c.outlier_detection.consecutive_5xx.value = 3
    c.outlier_detection.base_ejection_time.FromSeconds(10)
    got = cluster_config(c, assignment("users", [1001, 1002], weight=3))
    assert got.lb_policy == "maglev"
    assert got.connect_timeout == 2.0
    assert (got.circuit_breakers.max_connections, got.circuit_breakers.max_requests) == (7, 99)
    assert got.circuit_breakers.max_pending_requests == 1024  # unset: the default
    assert got.outlier_detection is not None
    assert got.outlier_detection.consecutive_failures == 3
    assert got.outlier_detection.base_ejection_time == 10.0
    assert got.endpoints == (Endpoint("127.0.0.1", 1001, 3), Endpoint("127.0.0.1", 1002, 3))


def test_an_eds_cluster_without_its_assignment_has_no_endpoints_yet() -> None:
    assert cluster_config(cluster("users"), None).endpoints == ()


def test_a_static_cluster_takes_its_own_load_assignment() -> None:
    got = cluster_config(cluster("s", eds=False, static=[7000]), None)
    assert got.endpoints == (Endpoint("127.0.0.1", 7000),)


def test_unhealthy_endpoints_are_left_out() -> None:
    got = endpoints(assignment("users", [1001], unhealthy=[1002]))
    assert got == (Endpoint("127.0.0.1", 1001),)


def test_unsupported_cluster_settings_are_refused_by_name() -> None:
    c = cluster("odd", lb=cluster_pb2.Cluster.CLUSTER_PROVIDED)
    with pytest.raises(XdsError, match="cluster 'odd': lb_policy CLUSTER_PROVIDED"):
        cluster_config(c, None)
    c = cluster("odd")
    c.type = cluster_pb2.Cluster.ORIGINAL_DST
    with pytest.raises(XdsError, match="type ORIGINAL_DST is not supported"):
        cluster_config(c, None)


def test_upstream_tls_comes_from_the_transport_socket() -> None:
    ctx = tls_pb2.UpstreamTlsContext(sni="users.internal")
    ctx.common_tls_context.validation_context.trusted_ca.filename = "/etc/ca.pem"
    cert = ctx.common_tls_context.tls_certificates.add()
    cert.certificate_chain.filename, cert.private_key.filename = "/etc/c.pem", "/etc/k.pem"
    c = cluster("users")
    c.transport_socket.name = "envoy.transport_sockets.tls"
    c.transport_socket.typed_config.CopyFrom(any_of(ctx))
    got = cluster_config(c, None)
    assert got.tls == ClusterTls("/etc/ca.pem", "/etc/c.pem", "/etc/k.pem", "users.internal")
    ctx.common_tls_context.validation_context.trusted_ca.Clear()
    ctx.common_tls_context.validation_context.trusted_ca.inline_string = "PEM"
    c.transport_socket.typed_config.CopyFrom(any_of(ctx))
    with pytest.raises(XdsError, match="only filename data sources"):
        cluster_config(c, None)


def test_the_matcher_list_becomes_ordered_routes() -> None:
    rc = route_config(
        "r",
        [
            (
                single(SERVICE, exact="org.example.Greeter"),
                action("v2", name="greeter", timeout=1.5),
            ),
            (
                single(prop("Version"), prefix="2."),
                action(weights=[("v1", 1), ("v2", 3)], retries=2),
            ),
        ],
        fallback=action("v1"),
    )
    got = routes(rc, "dubbo")
    assert [r.name for r in got] == ["greeter", "r_1", "r_2"]
    assert got[0].match.metadata == (("interface", StringMatcher("exact", "org.example.Greeter")),)
    assert got[0].action.cluster == "v2" and got[0].action.timeout == 1.5
    assert got[1].match.metadata == (("version", StringMatcher("prefix", "2.")),)
    assert [(w.cluster, w.weight) for w in got[1].action.weighted_clusters] == [
        ("v1", 1),
        ("v2", 3),
    ]
    assert got[1].action.retries is not None and got[1].action.retries.attempts == 2
    assert got[1].action.retries.retry_on == {"connect_failure", "reset"}
    assert got[2].match.metadata == () and got[2].action.cluster == "v1"


def test_the_method_input_maps_to_each_codecs_key() -> None:
    rc = route_config("r", [(single(METHOD, exact="GET"), action("c"))])
    assert routes(rc, "redis")[0].match.metadata[0][0] == "command"
    assert routes(rc, "http1")[0].match.metadata[0][0] == ":method"
    with pytest.raises(XdsError, match="codec 'redis' has no service"):
        routes(route_config("r", [(single(SERVICE, exact="x"), action("c"))]), "redis")


def test_or_and_not_predicates_expand() -> None:
    a, b = single(METHOD, exact="a"), single(METHOD, exact="b")
    either = single(METHOD, exact="_")
    either.ClearField("single_predicate")
    either.or_matcher.predicate.extend([a, b])
    negated = single(METHOD, exact="_")
    negated.ClearField("single_predicate")
    negated.not_matcher.CopyFrom(a)
    got = routes(route_config("r", [(either, action("x")), (negated, action("y"))]), "dubbo")
    assert [r.match.metadata[0][1] for r in got] == [
        StringMatcher("exact", "a"), StringMatcher("exact", "b"), StringMatcher("exact", "a", True),
    ]  # fmt: skip
    ignore_case = routes(route_config("r", [(single(METHOD, exact="Get", ignore_case=True),
                                             action("x"))]), "dubbo")  # fmt: skip
    assert ignore_case[0].match.matches({"method": "gEt"})
    assert not ignore_case[0].match.matches({"method": "gets"})


def test_build_config_lays_the_resources_over_the_static_config() -> None:
    base = parse_config(BASE)
    resources = XdsResources(
        clusters={"v1": Resource("c1", cluster("v1"))},
        endpoints={"v1": Resource("e1", assignment("v1", [2001]))},
        routes={"dubbo-routes": Resource("r1", route_config("dubbo-routes", [], action("v1")))},
    )
    config = build_config(base, rds_routes(base), resources)
    assert [c.name for c in config.clusters] == ["static", "v1"]
    assert config.clusters[1].endpoints == (Endpoint("127.0.0.1", 2001),)
    assert config.listeners[0].routes[0].action.cluster == "v1"
    assert config.listeners[1].routes == base.listeners[1].routes
    dump = config.raw["xds_resources"]
    assert dump["clusters"]["v1"]["version"] == "c1"
    assert dump["routes"]["dubbo-routes"]["resource"]["name"] == "dubbo-routes"


def test_build_config_refuses_routes_to_unknown_clusters_and_name_clashes() -> None:
    base = parse_config(BASE)
    stray = XdsResources(
        routes={"dubbo-routes": Resource("1", route_config("x", [], action("nope")))}
    )
    with pytest.raises(XdsError, match="names unknown cluster 'nope'"):
        build_config(base, rds_routes(base), stray)
    clash = XdsResources(clusters={"static": Resource("1", cluster("static"))})
    with pytest.raises(XdsError, match="a cluster of the static config has this name"):
        build_config(base, rds_routes(base), clash)


def test_the_xds_example_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "xds" / "proxy.yaml"
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    config = load_config(path)
    assert rds_routes(config) == {"dubbo": "dubbo-routes", "redis": "redis-routes"}


def test_the_control_plane_is_always_verified() -> None:
    bad = dict(BASE, xds={**BASE["xds"], "tls": {"verify": False}})
    with pytest.raises(
        ConfigError, match=r"xds\.tls\.verify: the control plane is always verified"
    ):
        parse_config(bad)

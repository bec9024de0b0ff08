"""Build xDS resources (Envoy's own protobuf messages from xds-protos) for the tests."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.filters.network.generic_proxy.action.v3 import action_pb2
from envoy.extensions.filters.network.generic_proxy.matcher.v3 import matcher_pb2 as gp_matcher
from envoy.extensions.filters.network.generic_proxy.v3 import route_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2, string_pb2

__all__ = [
    "METHOD",
    "SERVICE",
    "action",
    "any_of",
    "assignment",
    "cluster",
    "prop",
    "route_config",
    "single",
    "typed",
]


def any_of(message: Message) -> AnyProto:
    packed = AnyProto()
    packed.Pack(message)
    return packed


def typed(name: str, message: Message) -> xds_extension_pb2.TypedExtensionConfig:
    return xds_extension_pb2.TypedExtensionConfig(name=name, typed_config=any_of(message))


def cluster(
    name: str, *, eds: bool = True, lb: int = 0, static: Sequence[int] = ()
) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, lb_policy=lb)
    c.connect_timeout.FromSeconds(2)
    if eds:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.ads.SetInParent()
    else:
        c.type = cluster_pb2.Cluster.STATIC
        c.load_assignment.CopyFrom(assignment(name, static))
    return c


def assignment(
    name: str, ports: Sequence[int], *, unhealthy: Sequence[int] = (), weight: int = 0
) -> endpoint_pb2.ClusterLoadAssignment:
    group = endpoint_components_pb2.LocalityLbEndpoints()
    for port in (*ports, *unhealthy):
        lb = group.lb_endpoints.add()
        lb.endpoint.address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
            )
        )
        if weight:
            lb.load_balancing_weight.value = weight
        if port in unhealthy:
            lb.health_status = health_check_pb2.UNHEALTHY
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[group])


def action(
    cluster_name: str = "",
    *,
    name: str = "",
    weights: Sequence[tuple[str, int]] = (),
    timeout: float = 0.0,
    retries: int = 0,
) -> matcher_pb2.Matcher.OnMatch:
    a = action_pb2.RouteAction(name=name)
    if weights:
        for target, weight in weights:
            entry = a.weighted_clusters.clusters.add(name=target)
            entry.weight.value = weight
    else:
        a.cluster = cluster_name
    if timeout:
        a.timeout.FromNanoseconds(int(timeout * 1e9))
    if retries:
        a.retry_policy.CopyFrom(base_pb2.RetryPolicy(retry_on="connect-failure,reset"))
        a.retry_policy.num_retries.value = retries
    return matcher_pb2.Matcher.OnMatch(action=typed("route", a))


def single(
    input_message: Message, **string_match: object
) -> matcher_pb2.Matcher.MatcherList.Predicate:
    predicate = matcher_pb2.Matcher.MatcherList.Predicate()
    sp = predicate.single_predicate
    sp.input.CopyFrom(typed("input", input_message))
    sp.value_match.CopyFrom(string_pb2.StringMatcher(**string_match))
    return predicate


def route_config(
    name: str,
    rules: Sequence[tuple[matcher_pb2.Matcher.MatcherList.Predicate, matcher_pb2.Matcher.OnMatch]],
    fallback: matcher_pb2.Matcher.OnMatch | None = None,
) -> route_pb2.RouteConfiguration:
    m = matcher_pb2.Matcher()
    for predicate, on_match in rules:
        m.matcher_list.matchers.add(predicate=predicate, on_match=on_match)
    if fallback is not None:
        m.on_no_match.CopyFrom(fallback)
    return route_pb2.RouteConfiguration(name=name, routes=m)


SERVICE = gp_matcher.ServiceMatchInput()
METHOD = gp_matcher.MethodMatchInput()


def prop(name: str) -> gp_matcher.PropertyMatchInput:
    return gp_matcher.PropertyMatchInput(property_name=name)

"""The admin's ``/clusters`` view: every upstream endpoint's health and load, as text or JSON.

The text form follows Envoy's ``/clusters``, one ``cluster::endpoint::field::value`` line per
field; ``?format=json`` gives ``{"clusters": [{"name": ..., "endpoints": [{...}]}]}``. With
``--workers`` the supervisor sums its workers' views (``merge_statuses``): connections,
requests and ejections add up, an endpoint is healthy only if every worker has it in
rotation, ``ejected_for`` is the longest of them and ``health`` the worst.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from metaprotocol.core.stats import EndpointStatus

__all__ = ["clusters_json", "clusters_text", "merge_statuses", "statuses_from_json"]


def clusters_text(statuses: Iterable[EndpointStatus]) -> str:
    lines: list[str] = []
    for st in statuses:
        prefix = f"{st.cluster}::{st.address}::"
        lines += [
            f"{prefix}health_flags::{_flags(st)}",
            f"{prefix}ejected_for::{st.ejected_for:g}",
            f"{prefix}ejections::{st.ejections}",
            f"{prefix}consecutive_failures::{st.consecutive_failures}",
            f"{prefix}cx_active::{st.cx_active}",
            f"{prefix}rq_active::{st.rq_active}",
        ]
    return "".join(line + "\n" for line in lines)


def _flags(st: EndpointStatus) -> str:
    """Envoy's words: ``healthy``, or why not (``/failed_outlier_check``: ejected by outlier
    detection; ``/failed_active_hc``: out after failed health checks; ``/pending_active_hc``:
    not probed yet)."""
    flags = ""
    if st.ejected_for > 0:
        flags += "/failed_outlier_check"
    if st.health == "unhealthy":
        flags += "/failed_active_hc"
    elif st.health == "pending":
        flags += "/pending_active_hc"
    return "healthy" if st.healthy and not flags else flags or "/excluded"


def clusters_json(statuses: Iterable[EndpointStatus]) -> dict[str, Any]:
    clusters: dict[str, list[dict[str, Any]]] = {}
    for st in statuses:
        clusters.setdefault(st.cluster, []).append(
            {
                "address": st.address,
                "healthy": st.healthy,
                "ejected_for": st.ejected_for,
                "ejections": st.ejections,
                "consecutive_failures": st.consecutive_failures,
                "cx_active": st.cx_active,
                "rq_active": st.rq_active,
                "health": st.health,
            }
        )
    return {
        "clusters": [{"name": name, "endpoints": eps} for name, eps in clusters.items()],
    }


def statuses_from_json(data: Any) -> list[EndpointStatus]:
    """The statuses a ``clusters_json`` mapping stands for; ValueError if it is not one."""
    try:
        return [
            EndpointStatus(
                str(cluster["name"]),
                str(ep["address"]),
                bool(ep["healthy"]),
                float(ep["ejected_for"]),
                int(ep["ejections"]),
                int(ep["consecutive_failures"]),
                int(ep["cx_active"]),
                int(ep["rq_active"]),
                str(ep.get("health", "")),
            )
            for cluster in data["clusters"]
            for ep in cluster["endpoints"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"clusters json: {exc!r}") from None


def merge_statuses(views: Iterable[Sequence[EndpointStatus]]) -> list[EndpointStatus]:
    """One status per (cluster, endpoint) summing several workers' views, in first-seen order."""
    merged: dict[tuple[str, str], EndpointStatus] = {}
    for view in views:
        for st in view:
            key = (st.cluster, st.address)
            have = merged.get(key)
            if have is None:
                merged[key] = st
                continue
            merged[key] = EndpointStatus(
                st.cluster,
                st.address,
                have.healthy and st.healthy,
                max(have.ejected_for, st.ejected_for),
                have.ejections + st.ejections,
                have.consecutive_failures + st.consecutive_failures,
                have.cx_active + st.cx_active,
                have.rq_active + st.rq_active,
                _worst(have.health, st.health),
            )
    return list(merged.values())


def _worst(a: str, b: str) -> str:
    """The health of an endpoint two workers saw: unhealthy if either says so."""
    for word in ("unhealthy", "pending", "healthy"):
        if word in (a, b):
            return word
    return ""

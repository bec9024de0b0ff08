"""The ``tls`` keys of listeners and clusters: what they load into, the errors (each naming
its path) for missing files, bad versions and bad pairs, and the contexts built from them."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from metaprotocol.adapters.dispatch import bind_listener_changes
from metaprotocol.configfile import ConfigError, parse_config
from metaprotocol.core.config import ClusterTls, ListenerTls
from metaprotocol.tls import TlsContexts, TlsError, client_context, codec_alpn, server_context


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tls-config")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    out = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
        "junk": directory / "junk.pem",
    }
    ca.cert_pem.write_to_path(str(out["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(out["cert"]))
    cert.private_key_pem.write_to_path(str(out["key"]))
    out["junk"].write_text("not a certificate\n")
    return {name: str(path) for name, path in out.items()}


def _config(listener_tls: Any = None, cluster_tls: Any = None, codec: str = "redis") -> Any:
    listener: dict[str, Any] = {"name": "l", "address": "127.0.0.1:0", "codec": codec}
    cluster: dict[str, Any] = {"name": "c", "endpoints": ["127.0.0.1:7000"]}
    if listener_tls is not None:
        listener["tls"] = listener_tls
    if cluster_tls is not None:
        cluster["tls"] = cluster_tls
    return {"listeners": [listener], "clusters": [cluster]}


def _errors(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return list(caught.value.errors)


def test_listener_and_cluster_tls_load_with_their_defaults(files: dict[str, str]) -> None:
    config = parse_config(
        _config(
            {"cert_file": files["cert"], "key_file": files["key"], "min_version": 1.3},
            {"ca_file": files["ca"], "server_name": "redis.internal"},
        )
    )
    assert config.listeners[0].tls == ListenerTls(files["cert"], files["key"], None, "1.3")
    assert config.clusters[0].tls == ClusterTls(files["ca"], None, None, "redis.internal", True)
    defaults = parse_config(_config({"cert_file": files["cert"], "key_file": files["key"]}, {}))
    assert defaults.listeners[0].tls is not None
    assert defaults.listeners[0].tls.min_version == "1.2"
    assert defaults.clusters[0].tls == ClusterTls()  # verified against the system store
    assert parse_config(_config()).listeners[0].tls is None


def test_errors_name_the_path(files: dict[str, str]) -> None:
    errors = _errors(
        _config(
            {"cert_file": "/nonexistent/server.pem", "min_version": "1.1", "ciphers": "x"},
            {"cert_file": files["cert"], "verify": "yes", "ca_file": "/nonexistent/ca.pem"},
        )
    )
    assert "listeners[0].tls.key_file: missing required key" in errors
    assert "listeners[0].tls.cert_file: no such file: '/nonexistent/server.pem'" in errors
    assert any(
        e.startswith('listeners[0].tls.min_version: expected "1.2" or "1.3"') for e in errors
    )
    assert any(e.startswith("listeners[0].tls.ciphers: unknown key") for e in errors)
    assert "clusters[0].tls.key_file: required with cert_file" in errors
    assert "clusters[0].tls.ca_file: no such file: '/nonexistent/ca.pem'" in errors
    assert any(e.startswith("clusters[0].tls.verify: expected true or false") for e in errors)


def test_files_that_do_not_load_are_errors_at_the_tls_path(files: dict[str, str]) -> None:
    errors = _errors(
        _config(
            {"cert_file": files["junk"], "key_file": files["key"]},
            {"ca_file": files["junk"]},
        )
    )
    assert len(errors) == 2
    assert errors[0].startswith(f"listeners[0].tls: cannot load cert_file {files['junk']!r}")
    assert errors[1].startswith(f"clusters[0].tls: cannot load ca_file {files['junk']!r}")
    mismatched = _errors(_config({"cert_file": files["cert"], "key_file": files["ca"]}))
    assert mismatched[0].startswith("listeners[0].tls: cannot load cert_file")


def test_contexts_follow_the_settings(files: dict[str, str]) -> None:
    mtls = server_context(ListenerTls(files["cert"], files["key"], files["ca"], "1.3"))
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    assert mtls.minimum_version == ssl.TLSVersion.TLSv1_3
    plain = server_context(ListenerTls(files["cert"], files["key"]))
    assert plain.verify_mode == ssl.CERT_NONE
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    verified = client_context(ClusterTls(ca_file=files["ca"]))
    assert (verified.verify_mode, verified.check_hostname) == (ssl.CERT_REQUIRED, True)
    unverified = client_context(ClusterTls(verify=False))
    assert (unverified.verify_mode, unverified.check_hostname) == (ssl.CERT_NONE, False)
    with pytest.raises(TlsError, match="ca_file"):
        client_context(ClusterTls(ca_file=files["junk"]))


def test_alpn_comes_from_the_codec_class() -> None:
    assert codec_alpn("http1") == ("http/1.1",)
    assert codec_alpn("redis") == ()
    assert codec_alpn("no-such-codec") == ()


def test_contexts_for_a_config(files: dict[str, str]) -> None:
    config = parse_config(
        _config({"cert_file": files["cert"], "key_file": files["key"]}, {"ca_file": files["ca"]})
    )
    contexts = TlsContexts(config)
    assert contexts.listener("l") is not None
    assert contexts.listener("other") is None
    tls = config.clusters[0].tls
    assert tls is not None
    assert contexts.upstream(tls) is contexts.upstream(tls)
    # A setting the config does not have (a pool from before a reload) is built on demand.
    assert contexts.upstream(ClusterTls(verify=False)).verify_mode == ssl.CERT_NONE


def test_a_reload_cannot_turn_tls_on_or_off_at_the_same_address(
    files: dict[str, str], tmp_path: Path
) -> None:
    del tmp_path
    tls = {"cert_file": files["cert"], "key_file": files["key"]}
    plain = parse_config(_config())
    secure = parse_config(_config(tls))
    with pytest.raises(ValueError, match="listener 'l': turning TLS on or off"):
        bind_listener_changes(plain, secure, reuse_port=False)
    with pytest.raises(ValueError, match="listener 'l': turning TLS on or off"):
        bind_listener_changes(secure, plain, reuse_port=False)
    same = bind_listener_changes(secure, parse_config(_config(tls)), reuse_port=False)
    assert (same.removed, same.added) == ((), {})


def test_global_ratelimit_redis_takes_a_clusters_tls_settings(files: dict[str, str]) -> None:
    data = _config()
    data["global_ratelimit_redis"] = {"address": "127.0.0.1:6379", "tls": {"ca_file": files["ca"]}}
    redis = parse_config(data).global_ratelimit_redis
    assert redis is not None and redis.tls == ClusterTls(ca_file=files["ca"])
    data["global_ratelimit_redis"]["tls"] = {"ca_file": "/nonexistent/ca.pem", "verify": 1}
    errors = _errors(data)
    assert "global_ratelimit_redis.tls.ca_file: no such file: '/nonexistent/ca.pem'" in errors
    assert any(
        e.startswith("global_ratelimit_redis.tls.verify: expected true or false") for e in errors
    )

"""Every ready config in examples/ passes `metaprotocol check`, and the docs name every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
import yaml

from metaprotocol.cli import main
from metaprotocol.configfile import load_config, routing, schema, secrets
from metaprotocol.configfile import redis_cluster as redis_cluster_keys
from metaprotocol.configfile import tls as tls_keys
from metaprotocol.configfile import xds as xds_keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXPECTED = {"dubbo.yaml", "thrift.yaml", "http1.yaml", "redis.yaml", "trpc.yaml", "full.yaml"}


def test_there_is_one_example_per_codec_and_the_design_sample() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_passes_check(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / name
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{path}: ok; ")


def test_redis_auth_example_passes_check_with_its_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = EXAMPLES / "redis-auth.yaml"
    monkeypatch.delenv("PROXY_PASSWORD", raising=False)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert main(["check", str(path)]) != 0  # the variables it names are not set
    err = capsys.readouterr().err
    assert "environment variable 'PROXY_PASSWORD' is not set" in err
    assert "clusters[0].auth.password_env: environment variable 'REDIS_PASSWORD'" in err
    monkeypatch.setenv("PROXY_PASSWORD", "client-secret")
    monkeypatch.setenv("REDIS_PASSWORD", "server-secret")
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    output = capsys.readouterr().out
    assert output.startswith(f"{path}: ok; ") and "secret" not in output
    config = load_config(path)
    assert config.clusters[0].auth is not None and config.global_ratelimit_redis is not None
    assert config.global_ratelimit_redis.db == 1


def test_tls_example_passes_check_with_its_placeholder_files_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its certificate paths are relative placeholders: check it where they exist."""
    ca = trustme.CA()
    proxy, client = ca.issue_cert("localhost"), ca.issue_cert("client.test")
    (tmp_path / "certs").mkdir()
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("proxy.pem", proxy.cert_chain_pems[0]),
        ("proxy.key", proxy.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
    ):
        blob.write_to_path(str(tmp_path / "certs" / name))
    path = EXAMPLES / "tls.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    config = load_config(path)
    assert [lst.tls is not None for lst in config.listeners] == [True, True]
    assert config.clusters[0].tls is not None and config.clusters[1].tls is None
    # Elsewhere the placeholders are missing, and check says which.
    monkeypatch.chdir(ROOT)
    assert main(["check", str(path)]) == 1
    assert "listeners[0].tls.cert_file: no such file: 'certs/proxy.pem'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["dubbo", "thrift", "http1", "redis", "trpc"])
def test_each_codec_example_uses_its_codec(name: str) -> None:
    config = load_config(EXAMPLES / f"{name}.yaml")
    assert {listener.codec for listener in config.listeners} == {name}
    assert config.listeners[0].routes, "an example should show routing"


# The reference configuration sample, as first specified: examples/full.yaml stays equal to it.
DESIGN_SAMPLE = """\
admin:
  address: 127.0.0.1:9901
listeners:
  - name: redis
    address: 127.0.0.1:6380
    codec: redis
    idle_timeout: 60s
    max_message_size: 8MiB
    filters:
      - local_ratelimit:
          token_bucket: {max_tokens: 1000, tokens_per_fill: 1000, fill_interval: 1s}
          conditions:
            - match: {metadata: {command: {exact: FLUSHALL}}}
              token_bucket: {max_tokens: 0, tokens_per_fill: 0, fill_interval: 1s}
      - router: {}
    routes:
      - name: sessions
        match: {metadata: {key: {prefix: "session:"}}}
        route: {cluster: sessions, timeout: 2s}
      - name: default
        route:
          weighted_clusters: [{cluster: main, weight: 90}, {cluster: canary, weight: 10}]
clusters:
  - name: main
    endpoints: [127.0.0.1:6379]
  - {name: canary, endpoints: [127.0.0.1:6381]}
  - {name: sessions, endpoints: [127.0.0.1:6382, 127.0.0.1:6383], lb_policy: ring_hash}
"""


def test_full_example_is_the_design_sample() -> None:
    assert yaml.safe_load((EXAMPLES / "full.yaml").read_text()) == yaml.safe_load(DESIGN_SAMPLE)


def test_configuration_docs_name_every_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    keys = {
        *schema._TOP_KEYS,
        *schema._LISTENER_KEYS,
        *schema._CLUSTER_KEYS,
        *schema._BREAKER_KEYS,
        *schema._OUTLIER_KEYS,
        *schema._RATELIMIT_REDIS_KEYS,
        *secrets.CREDENTIALS_KEYS,
        *routing._ROUTE_ACTION_KEYS,
        *routing._GLOBAL_RATELIMIT_KEYS,
        *routing._TOKEN_BUCKET_KEYS,
        *tls_keys.LISTENER_TLS_KEYS,
        *tls_keys.CLUSTER_TLS_KEYS,
        *xds_keys.XDS_KEYS,
        *routing.FILTER_NAMES,
        *routing.MATCHER_KINDS,
        *routing.RETRY_ON,
        *schema.LB_POLICIES,
        *redis_cluster_keys.REDIS_CLUSTER_KEYS,
        *redis_cluster_keys.READ_FROM,
        "invert",
        "weight",
        "fraction",
        "conditions",
        "abort",
        "delay",
        "percentage",
        "add",
        "remove",
        "attempts",
    }
    spans = re.findall(r"`[^`\n]+`", docs)
    missing = sorted(k for k in keys if not any(re.search(rf"\b{k}\b", s) for s in spans))
    assert missing == []

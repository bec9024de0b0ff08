"""Secrets in the config: exactly one of password / password_file / password_env, path-named
errors that never show a value, and a redacted ``Config.raw`` (what /config_dump shows)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from metaprotocol.admin import AdminApp
from metaprotocol.configfile import ConfigError, parse_config
from metaprotocol.core.config import RateLimitRedisConfig
from metaprotocol.core.secrets import Credentials, Secret
from metaprotocol.core.stats import Stats

SECRET = "hunter2-very-secret"


def _data(
    listener_auth: Any = None, cluster_auth: Any = None, ratelimit: Any = None, codec: str = "redis"
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "l",
        "address": "127.0.0.1:0",
        "codec": codec,
        "routes": [{"name": "r", "route": {"cluster": "c"}}],
    }
    if listener_auth is not None:
        listener["codec_options"] = {"auth": listener_auth}
    cluster: dict[str, Any] = {"name": "c", "endpoints": ["127.0.0.1:6379"]}
    if cluster_auth is not None:
        cluster["auth"] = cluster_auth
    data: dict[str, Any] = {"listeners": [listener], "clusters": [cluster]}
    if ratelimit is not None:
        data["global_ratelimit_redis"] = ratelimit
    return data


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert all(SECRET not in error for error in info.value.errors)
    return info.value.errors


def test_each_form_of_secret_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")  # the trailing newline an editor adds is dropped
    monkeypatch.setenv("MP_TEST_SECRET", SECRET)
    config = parse_config(
        _data(
            listener_auth={"username": "app", "password_env": "MP_TEST_SECRET"},
            cluster_auth={"password_file": str(secret_file)},
            ratelimit={"address": "127.0.0.1:6380", "auth": {"password": SECRET}, "db": 3},
        )
    )
    expected = Credentials(Secret(SECRET), "app")
    assert config.listeners[0].codec_options["auth"] == expected
    assert config.clusters[0].auth == Credentials(Secret(SECRET))
    assert config.global_ratelimit_redis == RateLimitRedisConfig(
        "127.0.0.1", 6380, Credentials(Secret(SECRET)), 3
    )
    assert config.global_ratelimit_redis is not None
    assert config.global_ratelimit_redis.auth is not None
    assert config.global_ratelimit_redis.auth.password.reveal() == SECRET
    # Nothing that prints the config shows the secret; a pickled secret keeps its value.
    assert SECRET not in repr(config) and SECRET not in str(config.clusters)
    assert pickle.loads(pickle.dumps(Secret(SECRET))).reveal() == SECRET


def test_the_raw_config_and_its_dump_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        _data(
            listener_auth={"password": SECRET},
            cluster_auth={"username": "u", "password": SECRET},
            ratelimit={"address": "127.0.0.1:6380", "auth": {"password": SECRET}},
        )
    )
    dump = json.dumps(config.raw, default=str)
    assert SECRET not in dump
    assert config.raw["clusters"][0]["auth"] == {"username": "u", "password": "<redacted>"}
    assert config.raw["global_ratelimit_redis"]["auth"] == {"password": "<redacted>"}
    app = AdminApp(ready=lambda: True, snapshot=Stats().snapshot, config_raw=lambda: config.raw)
    status, _, body = app.respond("GET", "/config_dump")
    assert status == 200 and b"<redacted>" in body and SECRET.encode() not in body


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({}, "one of password, password_file, password_env is required"),
        ({"username": "u"}, "one of password, password_file, password_env is required"),
        (
            {"password": SECRET, "password_env": "X"},
            "give only one of password, password_file, password_env, got password and password_env",
        ),
        ({"password": ""}, "expected a non-empty string, got an empty string"),
        ({"password": 123456}, "expected a non-empty string, got a number"),
        ({"pasword": SECRET}, "unknown key (did you mean 'password'?)"),
    ],
)
def test_bad_secret_shapes_are_named_by_path(auth: dict[str, Any], message: str) -> None:
    errors = _errors(_data(cluster_auth=auth))
    assert any(e.startswith("clusters[0].auth") and message in e for e in errors), errors
    assert all("123456" not in e for e in errors)


def test_a_missing_file_or_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MP_TEST_UNSET", raising=False)
    missing = tmp_path / "nope"
    errors = _errors(
        _data(
            listener_auth={"password_env": "MP_TEST_UNSET"},
            cluster_auth={"password_file": str(missing)},
        )
    )
    assert (
        "listeners[0].codec_options.auth.password_env: environment variable 'MP_TEST_UNSET' "
        "is not set"
    ) in errors
    assert (
        f"clusters[0].auth.password_file: cannot read {str(missing)!r}: No such file or directory"
    ) in errors


def test_cluster_auth_needs_a_codec_that_can_log_in_upstream() -> None:
    errors = _errors(_data(cluster_auth={"password": SECRET}, codec="http1"))
    assert errors == [
        "clusters[0].auth: listener 'l' routes to this cluster with codec 'http1', which "
        "cannot log in to its upstreams"
    ]


def test_client_auth_is_a_redis_codec_option() -> None:
    errors = _errors(_data(listener_auth={"password": SECRET}, codec="http1"))
    assert len(errors) == 1 and errors[0].startswith("listeners[0].codec_options"), errors
    assert "auth" in errors[0]


def test_ratelimit_redis_db_must_be_a_count() -> None:
    errors = _errors(_data(ratelimit={"address": "127.0.0.1:6379", "db": -1}))
    assert errors == ["global_ratelimit_redis.db: must be >= 0, got -1"]


def test_a_secret_compares_in_constant_time_and_never_prints() -> None:
    secret = Secret(SECRET)
    assert secret.matches(SECRET.encode()) and not secret.matches(b"hunter2")
    assert SECRET not in f"{secret} {secret!r} {secret:>30}"
    credentials = Credentials(secret)
    assert credentials.matches(b"default", SECRET.encode())
    assert not credentials.matches(b"admin", SECRET.encode())

"""The container and Kubernetes examples hang together (docker cannot run here, so they are
checked by reading them): the Dockerfile builds the compiled wheel on a slim Python and runs
it as a non-root user; the Kubernetes manifest's config passes ``metaprotocol check``, its
readiness probe is the admin's ``/ready`` on the config's admin port, and both run the same
command line the CLI accepts. The LICENSE is the Apache-2.0 text the metadata names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaprotocol.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "examples" / "Dockerfile"
MANIFEST = ROOT / "examples" / "kubernetes" / "metaprotocol.yaml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            assert word.isupper(), f"not an instruction: {line!r}"
            out.append((word, rest.strip()))
    return out


def _manifest() -> dict[str, Any]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_dockerfile_builds_the_compiled_wheel_and_runs_it_unprivileged() -> None:
    steps = _instructions()
    known = {"ARG", "FROM", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "STOPSIGNAL",
             "ENTRYPOINT", "CMD"}  # fmt: skip
    assert {word for word, _ in steps} <= known
    args = dict(arg.split("=", 1) for word, arg in steps if word == "ARG")
    assert re.fullmatch(r"3\.1[1-9]", args["PYTHON_VERSION"])
    stages = [arg for word, arg in steps if word == "FROM"]
    assert len(stages) == 2 and all(s.startswith("python:${PYTHON_VERSION}-slim") for s in stages)
    runs = " ".join(arg for word, arg in steps if word == "RUN")
    assert "METAPROTOCOL_MYPYC=1 pip wheel" in runs and "not the compiled build" in runs
    for word, arg in steps:
        if word == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            assert all((ROOT / source).exists() for source in sources), arg
    final = steps[[i for i, (word, _) in enumerate(steps) if word == "FROM"][1] :]
    (user,) = [arg for word, arg in final if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert [arg for word, arg in final if word == "ENTRYPOINT"] == ['["metaprotocol"]']
    (cmd,) = [json.loads(arg) for word, arg in final if word == "CMD"]
    parsed = build_parser().parse_args(cmd)
    assert parsed.command == "run" and parsed.log_format == "json"
    ignore = [
        line
        for line in (ROOT / "examples" / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*" and {"!src/", "!pyproject.toml", "!LICENSE"} <= set(ignore)


def test_kubernetes_manifest_parses_and_probes_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = _manifest()
    assert set(docs) == {"ConfigMap", "Deployment", "Service"}
    config_text = docs["ConfigMap"]["data"]["config.yaml"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_text)
    assert main(["check", str(config_file)]) == 0, capsys.readouterr().err
    config = yaml.safe_load(config_text)
    admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/ready" and ports[probe["port"]] == admin_port
    listen = {int(lst["address"].rsplit(":", 1)[1]) for lst in config["listeners"]}
    assert listen <= set(ports.values())

    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    parsed = build_parser().parse_args(container["args"])
    assert Path(parsed.config).parent == Path(mount["mountPath"])
    assert Path(parsed.config).name == "config.yaml"
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [arg for word, arg in _instructions() if word == "USER"][-1]
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user.split(":")[0]
    assert pod["terminationGracePeriodSeconds"] > 10  # the default drain_timeout
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_license_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 170
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()

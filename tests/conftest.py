"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from metaprotocol.testing.playbook import unfinished_playbooks

IN_CI = os.environ.get("CI", "").lower() == "true"

# Property tests check what a codec answers, not how fast: on a loaded 2-core machine (and
# twice in CI, interpreted and compiled) one example can take longer than hypothesis's
# default 200 ms deadline, and data generation can trip the too_slow health check. Every
# ``@settings(...)`` in the suite inherits this profile for what it leaves unset.
settings.register_profile(
    "metaprotocol", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("metaprotocol")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _playbooks_must_finish() -> Iterator[None]:
    """A playbook whose last outputs were never expected fails the test that made it."""
    unfinished_playbooks()  # forget playbooks of earlier tests
    yield
    problems = unfinished_playbooks()
    if problems:
        pytest.fail("unfinished playbook:\n" + "\n".join(problems), pytrace=False)

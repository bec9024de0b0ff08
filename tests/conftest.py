"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from metaprotocol.testing.playbook import unfinished_playbooks

IN_CI = os.environ.get("CI", "").lower() == "true"


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

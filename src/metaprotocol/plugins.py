"""Third-party filters found through the ``metaprotocol.filters`` entry-point group.

A package registers a filter factory in its ``pyproject.toml``::

    [project.entry-points."metaprotocol.filters"]
    require_tenant = "mypkg.filters:RequireTenant"

and a listener uses it by name (``filters: [{require_tenant: {key: tenant}}, router]``).
The factory is called as ``factory(settings, stats, labels)`` once per listener and returns a
``metaprotocol.core.filters.Filter``; an optional ``factory.validate(settings)`` returns a
list of problems that ``metaprotocol check`` reports with their config path.
(Codecs use the ``metaprotocol.codecs`` group, see ``metaprotocol.codecs.registry``.)
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

__all__ = ["filter_plugin_names", "find_filter_factory"]

GROUP = "metaprotocol.filters"


def filter_plugin_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def find_filter_factory(name: str) -> Any | None:
    """The factory registered under ``name``, or None."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    return None

"""This batchserve's version, in a leaf module of its own: the manifest records it and ``--version``
prints it, and neither should have to import the package's public facade (``batchserve/__init__``)
to get it, an arrow running back up the house plan. Looked up on first use, not at import:
``importlib.metadata`` costs ~20 ms of every start.
"""

from __future__ import annotations

import functools

__all__ = ["version"]


@functools.cache
def version() -> str:
    """The installed distribution's version (``0+unknown`` when running from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("batchserve")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"

"""The ``BATCHSERVE_*`` environment as settings: the only place settings are read from the environment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from batchserve.config.values import CONVERTERS, SERVE_CONVERTERS
from batchserve.errors import ConfigError, closest

__all__ = ["EXTRA_ENV", "from_env"]


#: ``BATCHSERVE_*`` variables that are not settings but are still ours (so not a typo):
#: the audit trail's actor, the CLI's log format and log file, and the server's bearer token (a secret:
#: never a setting, so never in a job file or a manifest).
EXTRA_ENV = frozenset({"BATCHSERVE_ACTOR", "BATCHSERVE_LOG_FORMAT", "BATCHSERVE_LOG_FILE", "BATCHSERVE_TOKEN"})


def from_env(env: Mapping[str, str], converters: Mapping[str, Callable[[Any], Any]] = CONVERTERS) -> dict[str, Any]:
    """The ``BATCHSERVE_*`` settings; one that is no setting is a typo (``BATCHSERVE_OUPUT`` would
    otherwise be ignored and the run write somewhere else), named with the closest real one."""
    known = {f"BATCHSERVE_{n.upper()}" for n in (*CONVERTERS, *SERVE_CONVERTERS)} | EXTRA_ENV
    for key in sorted(env):
        if key.startswith("BATCHSERVE_") and key not in known:
            raise ConfigError(f"unknown environment variable {key}{closest(key, sorted(known))}; "
                              "unset it, or see `batchserve score --help` for the variables batchserve reads")
    found: dict[str, Any] = {}
    for name in converters:
        key = f"BATCHSERVE_{name.upper()}"
        if key in env and env[key] != "":
            found[name] = env[key]
    return found

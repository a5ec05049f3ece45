"""Times and names a run stamps on what it writes: UTC timestamps, run ids, and who acted (the model
repository's audit trail)."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["TIMESTAMP_FORMAT", "utc_now", "new_run_id", "current_actor"]


#: How every artifact and audit event writes a time: UTC, to the microsecond.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Now, as manifests, locks and the model repository's audit trail record it."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime(TIMESTAMP_FORMAT)


def new_run_id() -> str:
    """A run id: sortable by start time, unique enough to name staging folders and Dask keys."""
    import datetime as dt

    # os.urandom is what secrets.token_hex reads; importing secrets (hmac, random) costs ~5 ms per command
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def current_actor(env: Mapping[str, str] | None = None) -> str:
    """Who changes the model repository, for its audit trail: ``BATCHSERVE_ACTOR`` or user@host."""
    import getpass
    import socket

    env = os.environ if env is None else env
    actor = env.get("BATCHSERVE_ACTOR", "").strip()
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"

"""Which worker the current task runs on: a Dask worker, or the in-process one of a small local
run (``local-threads``), which imports no Dask at all (its import is ~0.3 s of a 1 s job)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["current_worker", "running_on", "host_of"]

_local = threading.local()


def current_worker() -> Any:
    """The worker running this task: the in-process one when this thread runs for it, else Dask's."""
    worker = getattr(_local, "worker", None)
    if worker is not None:
        return worker
    from distributed import get_worker

    return get_worker()


@contextmanager
def running_on(worker: Any) -> Iterator[None]:
    """Mark this thread as running tasks for ``worker`` (the in-process engine's task thread)."""
    previous = getattr(_local, "worker", None)
    _local.worker = worker
    try:
        yield
    finally:
        _local.worker = previous


def host_of(address: str) -> str:
    """The host part of a worker address: ``tcp://10.0.0.5:4321`` and ``inproc://10.0.0.5/77`` -> ``10.0.0.5``."""
    rest = address.split("://", 1)[-1]
    if "/" in rest:
        return rest.split("/", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest

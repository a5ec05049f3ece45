"""Which worker the current task runs on: a Dask worker, or the in-process one of a small local
run (``local-threads``), which imports no Dask at all (its import is ~0.3 s of a 1 s job)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["current_worker", "running_on", "host_of", "progress_topic", "RowReporter"]

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


def progress_topic(run_id: str) -> str:
    """The event topic a run's tasks report rows on (the client subscribes to it)."""
    return f"batchserve-progress-{run_id}"


class RowReporter:
    """A task's rows so far, reported to the client as batches are scored (Dask's ``log_event`` on a
    Dask worker, a direct call in-process): one large file moved the progress bar only when it ended.
    At most every :attr:`EVERY_S`, so a file of a hundred small batches sends a few events, not a hundred;
    the receipt settles the count, so a lost or late event only delays the bar."""

    EVERY_S = 0.5

    def __init__(self, run_id: str, key: str) -> None:
        self.topic, self.key = progress_topic(run_id), key
        self.rows = 0
        self._last = time.monotonic()

    def add(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self._last < self.EVERY_S:
            return
        self._last = now
        try:
            current_worker().log_event(self.topic, {"key": self.key, "rows": self.rows})
        except Exception:  # noqa: BLE001, S110 - progress is for people; it never fails a file
            pass

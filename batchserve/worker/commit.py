"""The gate every commit passes on a worker, so a stopped run's manifest lists exactly what is on disk."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchserve.errors import WorkerStateError

__all__ = ["CommitGate", "commit_fence", "stop_commits", "commits_stopped"]


class CommitGate:
    """This worker process's gate in front of every commit (the final move of a file).

    Commits pass it concurrently; :meth:`stop` marks a run stopped and waits until no move is in
    progress, after which that run's commits are refused. The client calls ``stop`` on every
    worker (``client.run``) when a run ends early, so once it returns, the set of committed files
    is final and the manifest can list exactly what is on disk. Nothing crosses the network per
    file: a Dask Lock here cost 2-3 ms per commit (three scheduler round trips, serialised).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._stopped: set[str] = set()

    @contextmanager
    def commit(self, run_id: str) -> Iterator[None]:
        with self._cond:
            if run_id in self._stopped:
                raise WorkerStateError("the run was stopped before this file committed; it is abandoned")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def stopped(self, run_id: str) -> bool:
        with self._cond:
            return run_id in self._stopped

    def stop(self, run_id: str, timeout: float = 120.0) -> bool:
        """Refuse the run's commits from now on; True once no commit is in progress."""
        with self._cond:
            self._stopped.add(run_id)
            return self._cond.wait_for(lambda: self._active == 0, timeout)


_GATE = CommitGate()


def commit_fence(run_id: str) -> Any:
    """The context a commit's final move runs in (see :class:`CommitGate`)."""
    return _GATE.commit(run_id)


def stop_commits(run_id: str) -> bool:
    """Run on every worker by the client (``client.run``) when a run stops early."""
    return _GATE.stop(run_id)


def commits_stopped(run_id: str) -> bool:
    """Whether the run was stopped here: a bundle starts no further file once it was."""
    return _GATE.stopped(run_id)

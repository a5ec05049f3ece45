"""worker.py: the commit gate that makes a stopped run's manifest list exactly what is on disk."""

from __future__ import annotations

import threading
import time

import pytest

from batchserve.errors import WorkerStateError
from batchserve.worker import CommitGate as _CommitGate


def test_stop_waits_for_a_commit_in_progress_then_refuses_that_run_only() -> None:
    gate = _CommitGate()
    inside, release, stopped = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def committing() -> None:
        with gate.commit("run-a"):
            inside.set()
            release.wait(5)
            order.append("moved")

    def stopping() -> None:
        assert gate.stop("run-a", timeout=5)
        order.append("stopped")
        stopped.set()

    t1 = threading.Thread(target=committing)
    t1.start()
    assert inside.wait(5)
    t2 = threading.Thread(target=stopping)
    t2.start()
    time.sleep(0.05)
    assert not stopped.is_set()  # the stop waits while a file is being moved into place
    release.set()
    t1.join(5)
    t2.join(5)
    assert order == ["moved", "stopped"]
    with pytest.raises(WorkerStateError, match="stopped before this file committed"):
        with gate.commit("run-a"):
            pass
    with gate.commit("run-b"):  # another run on the same worker is unaffected
        pass


def test_commits_of_one_run_pass_the_gate_concurrently() -> None:
    gate = _CommitGate()
    both = threading.Barrier(2, timeout=5)

    def commit() -> None:
        with gate.commit("run"):
            both.wait()  # would time out if the gate serialised commits

    threads = [threading.Thread(target=commit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert gate.stop("run", timeout=1)

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


# --- the model plugin, on a real (in-process) Dask cluster ----------------------------------------


def _spec(path, **kw):
    from batchserve import model, scoring
    from batchserve.worker import ModelSpec
    from tests.conftest import FEATURES

    data = open(path, "rb").read()
    info = model.describe(data)
    plan = scoring.plan_features(info, FEATURES, FEATURES)
    return ModelSpec(url=str(path), sha256=kw.pop("sha256", info.sha256), device="cpu", plan=plan, **kw)


def test_a_model_changed_since_planning_is_refused_on_the_worker(inproc_cluster: str, model_dir: dict) -> None:
    from distributed import Client

    from batchserve.worker import ModelPlugin

    spec = _spec(model_dir["logreg"][0], sha256="0" * 64)  # what the client planned with
    with Client(inproc_cluster) as client, pytest.raises(WorkerStateError, match="model file changed"):
        client.register_plugin(ModelPlugin(spec), name=spec.plugin_name)


def test_registering_the_same_model_twice_keeps_the_session(inproc_cluster: str, model_dir: dict) -> None:
    from distributed import Client

    from batchserve.worker import ModelPlugin

    spec = _spec(model_dir["logreg"][0])

    def session_id(dask_worker) -> int:  # type: ignore[no-untyped-def]
        return id(dask_worker.plugins[spec.plugin_name].model.session)

    with Client(inproc_cluster) as client:
        client.register_plugin(ModelPlugin(spec), name=spec.plugin_name)
        first = client.run(session_id)
        client.register_plugin(ModelPlugin(spec), name=spec.plugin_name)
        assert client.run(session_id) == first  # idempotent: no second session, no second warm-up
        other = _spec(model_dir["lgbm"][0])
        assert other.plugin_name != spec.plugin_name  # another model gets its own plugin

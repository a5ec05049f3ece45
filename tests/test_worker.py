"""worker.py: the commit gate that makes a stopped run's manifest list exactly what is on disk."""

from __future__ import annotations

import threading
import time
from pathlib import Path

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


# --- the read / infer / write stages --------------------------------------------------------------


def test_a_reader_stopped_by_a_failed_writer_ends_the_loop_instead_of_hanging() -> None:
    """The writer fails (a full disk) and stops the task just as the reader reaches the end of the file:
    the reader then gives up without its end-of-stream marker. Iterating must end, not wait forever."""
    from batchserve.worker.stages import Stage

    stop, at_end, release = threading.Event(), threading.Event(), threading.Event()

    def source():  # type: ignore[no-untyped-def]
        yield "batch"
        at_end.set()
        release.wait(5)  # the writer fails here

    reader = Stage(source(), stop)
    seen: list[str] = []
    finished = threading.Event()

    def consume() -> None:
        seen.extend(reader)
        finished.set()

    threading.Thread(target=consume, daemon=True).start()
    assert at_end.wait(5)
    stop.set()  # what Writer does on its error
    release.set()
    assert finished.wait(5), "the inference loop hung waiting for a reader that had stopped"
    assert seen == ["batch"]


def test_a_reader_that_failed_after_a_stop_raises_its_error() -> None:
    from batchserve.worker.stages import Stage

    stop = threading.Event()

    def source():  # type: ignore[no-untyped-def]
        stop.set()
        raise OSError("disk gone")
        yield  # pragma: no cover

    with pytest.raises(OSError, match="disk gone"):
        list(Stage(source(), stop))


def test_a_bundle_starts_no_file_once_its_run_was_stopped(tmp_path: Path) -> None:
    """After the client closed the fence, the rest of a bundle is not even read: a stopped run's
    engine shuts down in seconds, whatever the bundle's length."""
    from batchserve.scoring import FeaturePlan, InputBinding
    from batchserve.worker import FileTask, score_bundle, stop_commits
    from batchserve.worker.context import running_on
    from tests.conftest import make_table, write_dataset

    write_dataset(tmp_path / "in", {f"p{i}.parquet": make_table(5, seed=i) for i in range(3)})
    plan = FeaturePlan(("f0",), (InputBinding("x", "float32", ("f0",), 2),))

    def task(run_id: str, i: int) -> FileTask:
        rel = f"p{i}.parquet"
        return FileTask(run_id=run_id, input_url=str(tmp_path / "in" / rel), relpath=rel, output_url="",
                        staging_url="", keep=None, batch_size=100, plugin_name=None, plan=plan, prefix="",
                        storage_options=(), write=False)

    worker = type("W", (), {"address": "inproc://127.0.0.1/1"})()
    with running_on(worker):
        assert len(score_bundle(tuple(task("live-run", i) for i in range(3)), True)) == 3  # read and profiled
        assert stop_commits("stopped-run")
        assert score_bundle(tuple(task("stopped-run", i) for i in range(3)), True) == []

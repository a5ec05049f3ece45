"""The in-process engine's stand-in for a Dask client (pipeline/inprocess.py): futures finish with
their results or errors, functions run on the worker with it, and close() lets the running task end
before it returns, so nothing writes after a stopped run has cleaned up; queued tasks never start."""

from __future__ import annotations

import threading

import pytest

from batchserve.pipeline import inprocess
from batchserve.worker.context import current_worker, host_of


def test_results_errors_and_the_worker_a_task_sees() -> None:
    client = inprocess.InProcessClient()
    try:
        ok = client.submit(lambda a, b: (a + b, current_worker()), 2, 3, key="ok")
        bad = client.submit(lambda: 1 / 0, key="bad")
        done = list(inprocess.as_completed([ok, bad]))
        assert sorted(f.key for f in done) == ["bad", "ok"]
        assert ok.result() == (5, client.worker) and ok.status == "finished"
        with pytest.raises(ZeroDivisionError):
            bad.result()
        assert bad.status == "error"
        # client.run: {address: result}, with the worker passed where the function asks for it
        assert client.run(lambda x, dask_worker=None: (x, dask_worker.name), 7) == {client.worker.address: (7, "0")}
        assert client.run(lambda: 1 / 0, on_error="return")[client.worker.address].__class__ is ZeroDivisionError
        info = client.scheduler_info()["workers"][client.worker.address]
        assert info["host"] == host_of(client.worker.address) == "127.0.0.1"
    finally:
        client.close()


def test_close_waits_for_the_running_task_and_cancels_the_queued_ones() -> None:
    client = inprocess.InProcessClient()
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.append("slow")
        return "slow"

    running = client.submit(slow, key="running")
    queued = client.submit(lambda: finished.append("queued"), key="queued")
    assert started.wait(10)
    closer = threading.Thread(target=client.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still waiting for the running task
    release.set()
    closer.join(10)
    assert not closer.is_alive() and finished == ["slow"]
    assert running.result() == "slow" and queued.cancelled() and queued.status == "cancelled"


def test_setup_once_per_plugin_name_and_teardown_on_close() -> None:
    calls: list[str] = []

    class Plugin:
        def setup(self, worker: object) -> None:
            calls.append("setup")

        def teardown(self, worker: object) -> None:
            calls.append("teardown")

    client = inprocess.InProcessClient()
    client.register_plugin(Plugin(), name="p")
    client.register_plugin(Plugin(), name="p")
    client.close()
    assert calls == ["setup", "teardown"]


@pytest.mark.parametrize(("address", "host"), [("tcp://10.0.0.5:4321", "10.0.0.5"), ("tcp://[::1]:80", "[::1]"),
                                               ("inproc://127.0.0.1/77", "127.0.0.1"), ("ucx://gpu-3:1", "gpu-3")])
def test_host_of_an_address(address: str, host: str) -> None:
    assert host_of(address) == host


def test_split_rows_on_the_in_process_engine_scores_every_row_once(tmp_path, monkeypatch) -> None:
    """Issue 20, item 12: --split-rows sends a merge task its pieces' futures; Dask passes their results,
    and so must the in-process engine (it passed the futures: AttributeError 'TaskFuture' ... 'piece')."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    import batchserve
    from batchserve.pipeline import cluster
    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    monkeypatch.setattr(cluster, "default_workers", lambda: 1)  # the in-process engine on any machine
    result = batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA / "date=2026-11-01"),
                              output=str(tmp_path / "out"), split_rows=1000, batch_size=500)
    assert result.manifest.run.engine is not None and result.manifest.run.engine.kind == "local-threads"
    got = ds.dataset(tmp_path / "out", format="parquet", exclude_invalid_files=True).to_table()
    want = pa_concat([pq.read_table(p) for p in sorted((SAMPLE_DATA / "date=2026-11-01").glob("*.parquet"))])
    assert got.num_rows == want.num_rows == 20_000
    assert sorted(got.column("transaction_id").to_pylist()) == sorted(want.column("transaction_id").to_pylist())


def pa_concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def test_a_future_among_the_arguments_is_its_result() -> None:
    client = inprocess.InProcessClient(threads=2)
    try:
        parts = [client.submit(lambda x: x * 10, i, key=f"p{i}") for i in range(3)]
        total = client.submit(lambda *xs: sum(xs), *parts, key="sum")
        assert total.result(timeout=30) == 30
    finally:
        client.close()

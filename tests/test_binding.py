"""IO binding (batchserve/binding.py): inputs uploaded ahead of the run, outputs bound.

A GPU session gets a binder by itself; here the same binder runs on the CPU device, so every decision
and every line of the bound path runs without a GPU (ORT's IO binding works on any device). What
needs a GPU (pinned memory, the CUDA copy) has its own test, skipped cleanly where there is none.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchserve import binding, model
from tests import models
from tests.conftest import features_matrix, make_table, write_dataset

HAS_GPU = model.visible_gpu_count() > 0


def _bound(data: bytes) -> tuple[model.LoadedModel, model.LoadedModel]:
    """The same model twice on the CPU: plain, and with a (pageable) CPU binder."""
    plain = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    bound = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    bound.binder = model.bind(bound, "cpu", 0)
    assert bound.binder is not None and bound.io_binding == "pageable" and plain.io_binding is None
    return plain, bound


@pytest.mark.parametrize("infer_rows", [None, 7])
def test_bound_runs_match_the_oracle_and_the_plain_session(infer_rows: int | None) -> None:
    """Device feeds cut into runs of ``infer_rows`` (the probe's size) give every row once, in order:
    equal to the model's float64 oracle within float32's bound, and to the unbound session bit for bit."""
    data, oracle = models.multi_output(5)
    x = np.random.default_rng(3).normal(size=(100, 5)).astype(np.float32)
    plain, bound = _bound(data)
    plain.infer_rows = bound.infer_rows = infer_rows
    assert bound.binder is not None and bound.binder.bind_outputs
    staged = bound.prepare({"X": x})
    assert isinstance(staged, binding.DeviceFeeds) and staged.rows == 100
    assert len(staged.chunks) == (1 if infer_rows is None else 15)
    got, inline, want = bound.run(staged), bound.run({"X": x}), plain.run({"X": x})
    truth = oracle(x)
    for name in ("score", "embedding"):
        models.assert_within(got[name].reshape(truth[name].shape), truth[name], truth[f"{name}_bound"], name)
        np.testing.assert_array_equal(got[name], want[name])
        np.testing.assert_array_equal(inline[name], want[name])
    models.assert_bucket(got["bucket"], truth)
    for m in (plain, bound):
        m.close()


def test_a_classifier_with_string_labels_runs_unbound_outputs_on_device_inputs() -> None:
    """String outputs cannot be bound (onnxruntime 1.31 crashes copying one back): such a model is
    run with ``session.run`` on its device inputs, and its labels still match scikit-learn's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, "yes", "no")
    data, clf = models.logreg(x, y, zipmap=True)
    plain, bound = _bound(data)
    assert bound.binder is not None and not bound.binder.bind_outputs
    got = bound.run(bound.prepare({"X": x}))
    label = next(n for n in got if "label" in n)
    np.testing.assert_array_equal(got[label], plain.run({"X": x})[label])
    agree = np.mean(got[label] == clf.predict(x))
    assert agree == 1.0 or agree > 0.99  # ties at p = 0.5 may round either way in float32
    for m in (plain, bound):
        m.close()


def test_a_model_with_a_string_input_is_not_bound(model_dir: dict) -> None:
    loaded = model.build_session(Path(model_dir["string_input"][0]).read_bytes(), device="cpu",
                                 intra_op_threads=1, gpu_id=None)
    assert model.bind(loaded, "cpu", 0) is None
    loaded.close()


def test_the_pool_lends_a_block_to_one_borrower_at_a_time_and_reuses_it() -> None:
    pool = binding.PinnedPool(None)
    assert not pool.pinned
    with pool.block(100) as a:
        with pool.block(50) as b:  # a is lent: a second borrower gets its own block
            assert a.nbytes >= 100 and b.nbytes >= 50 and not np.shares_memory(a, b)
    with pool.block(80) as c:  # both returned: the smallest that fits is lent again
        assert np.shares_memory(c, b) is False and c.nbytes >= 80
        assert np.shares_memory(c, a)
    with pool.block(1000) as d:  # none fits: a new block
        assert d.nbytes >= 1000 and not np.shares_memory(d, a)
    pool.close()


def test_a_refused_pin_leaves_the_run_on_ordinary_memory() -> None:
    """cudaHostAlloc can fail (a container's locked-memory limit); uploads then come from pageable
    memory and the manifest's io_binding says so, instead of the task failing."""

    class NoPinning:  # the CUDA runtime's answer where locked memory is exhausted
        def cudaHostAlloc(self, ptr, size, flags) -> int:
            return 2  # cudaErrorMemoryAllocation

    pool = binding.PinnedPool(NoPinning())
    assert pool.pinned
    with pool.block(64) as buf:
        assert buf.nbytes >= 64
    assert not pool.pinned and "CUDA error 2" in (pool.refused or "")
    pool.close()


class _HostPool(binding.PinnedPool):
    """The staging path of a pinned pool (copy into a lent block, upload from it) on ordinary memory."""

    def __init__(self) -> None:
        super().__init__(runtime=None)

    @property
    def pinned(self) -> bool:
        return True


def test_staged_uploads_from_many_threads_each_score_their_own_rows() -> None:
    """Eight readers uploading at once through the staging blocks (several tasks on one worker):
    each batch comes back scored from its own rows, so no block was reused while still lent."""
    data, _ = models.multi_output(3)
    plain, bound = _bound(data)
    plain.close()
    assert bound.binder is not None
    bound.binder.pool = _HostPool()
    xs = [np.full((4096, 3), i, dtype=np.float32) for i in range(8)]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(8)

    def upload(i: int) -> None:
        start.wait()
        staged = [bound.prepare({"X": xs[i]}) for _ in range(5)]
        results[i] = np.concatenate([bound.run(s)["bucket"] for s in staged])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):  # bucket = trunc(row sum) = 3 * i
        np.testing.assert_array_equal(results[i], np.full(5 * 4096, 3 * i))
    assert len(bound.binder.pool._free) <= 8  # blocks are reused, not allocated per upload
    bound.close()


def test_a_task_on_a_bound_session_builds_and_uploads_features_on_the_reader_thread(
    tmp_path: Path, model_dir: dict, train_table,
) -> None:
    """The task's GPU path (features and upload in the reader stage), run on the CPU device: the
    scored file equals scikit-learn's predictions row for row, and the upload ran off the task's thread."""
    from batchserve.worker import FileTask, WorkerModel, score_file
    from batchserve.worker.context import running_on
    from tests.test_worker import _spec

    path, clf = model_dir["logreg"]
    table = make_table(5000, seed=11)
    write_dataset(tmp_path / "in", {"part.parquet": table}, row_group_size=1000)
    plugin = WorkerModel(_spec(path))
    state = type("State", (), {"nthreads": 1})()
    worker = type("W", (), {"address": "inproc://127.0.0.1/1", "name": "0", "plugins": {}, "state": state})()
    worker.plugins[plugin.name] = plugin
    with running_on(worker):
        plugin.setup(worker)
        assert plugin.model is not None
        plugin.model.binder = model.bind(plugin.model, "cpu", 0)
        threads: set[str] = set()
        prepare = plugin.model.prepare

        def traced(feeds):
            threads.add(threading.current_thread().name)
            return prepare(feeds)

        plugin.model.prepare = traced  # type: ignore[method-assign]
        out = tmp_path / "out" / "part.parquet"
        score_file(FileTask(
            run_id="r1", input_url=str(tmp_path / "in" / "part.parquet"), relpath="part.parquet",
            output_url=str(out), staging_url=str(tmp_path / "out" / ".part.staging"), keep=None,
            batch_size=1000, plugin_name=plugin.name, plan=plugin.spec.plan, prefix="", storage_options=(),
        ))
        plugin.teardown(worker)
    assert threads and threading.current_thread().name not in threads
    scored = pq.read_table(out)
    assert scored.column("id").to_pylist() == table.column("id").to_pylist()
    want = clf.predict_proba(features_matrix(table).astype(np.float32))[:, 1]
    got = np.asarray(scored.column("probabilities").to_pylist())[:, 1]
    models.assert_within(got, want, 1e-5 * np.maximum(1.0, np.abs(want)), "probability of class 1")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_a_cuda_session_is_bound_with_pinned_memory_and_matches_the_cpu() -> None:
    data, oracle = models.multi_output(8)
    x = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    gpu = model.build_session(data, device="cuda", intra_op_threads=1, gpu_id=0)
    assert gpu.io_binding == "pinned", "libcudart not found beside the CUDA provider"
    got = gpu.run(gpu.prepare({"X": x}))
    truth = oracle(x)
    models.assert_within(got["embedding"], truth["embedding"], truth["embedding_bound"], "embedding")
    gpu.close()

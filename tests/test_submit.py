"""pipeline/submit.py: how large files are split into row-group pieces."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchserve.io import Footer
from batchserve.pipeline.submit import pieces


def _footer(groups: list[int]) -> Footer:
    return Footer(pa.schema([("x", pa.float64())]), sum(groups), tuple(groups))


def test_small_or_single_group_files_stay_whole() -> None:
    assert pieces(_footer([100, 100]), 100) is None  # not above 2x the target
    assert pieces(_footer([10_000]), 100) is None  # one row group cannot be split


def test_groups_are_cut_at_about_the_target() -> None:
    assert pieces(_footer([40] * 10), 100) == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]


@given(groups=st.lists(st.integers(0, 500), min_size=1, max_size=40), target=st.integers(1, 2000))
def test_pieces_cover_every_group_once_in_order(groups: list[int], target: int) -> None:
    ranges = pieces(_footer(groups), target)
    if ranges is None:
        return
    assert len(ranges) > 1
    assert [g for r in ranges for g in r] == list(range(len(groups)))  # each group once, in order
    for r in ranges[:-1]:
        assert sum(groups[g] for g in r) >= target  # only the last piece may be short


def test_the_engine_is_chosen_by_gpus_dask_cuda_size_and_flags() -> None:
    """Decided without a GPU: which engine each machine gets."""
    from batchserve.config import resolve_score_config
    from batchserve.pipeline.cluster import THREADS_MAX_ROWS, engine_for

    def cfg(**kw: object) -> object:
        return resolve_score_config({"model": "m", "input": "i", "output": "o", **kw}, env={})

    small, big = 100_000, THREADS_MAX_ROWS + 1
    assert engine_for(cfg(scheduler="tcp://10.0.0.5:8786"), small, gpus=4, dask_cuda=True) == "scheduler"
    assert engine_for(cfg(), small, gpus=2, dask_cuda=True) == "local-cuda"
    assert engine_for(cfg(), small, gpus=2, dask_cuda=False) == "local"  # our own worker per GPU
    assert engine_for(cfg(device="cpu"), small, gpus=2, dask_cuda=True) != "local-cuda"
    assert engine_for(cfg(), big, gpus=0, dask_cuda=True) == "local"
    assert engine_for(cfg(workers=1), small, gpus=0, dask_cuda=False) == "local"  # asked for processes


def test_many_small_files_get_a_task_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """From 512 files of at most 16,384 rows on average, a CPU run gets a task per core (capped at 8):
    on 2 cores threads of this process (a file holds the GIL ~2 ms of its ~5.3 ms), beyond that worker
    processes, which share the GIL-bound part out."""
    from batchserve import tuning
    from batchserve.config import resolve_score_config
    from batchserve.pipeline import cluster

    def cfg(**kw: object) -> object:
        return resolve_score_config({"model": "m", "input": "i", "output": "o", **kw}, env={})

    for cores, want in [(2, 2), (6, 6), (64, cluster.SMALL_FILES_WORKERS_MAX)]:
        monkeypatch.setattr(tuning, "available_cores", lambda c=cores: c)
        monkeypatch.setattr(cluster, "default_workers", lambda c=cores: max(1, c // 4))
        threads = cores <= cluster.SMALL_FILES_THREADS_MAX_CORES
        assert cluster.engine_for(cfg(), 1_000_000, files=2000, gpus=0) == ("local-threads" if threads else "local")
        assert cluster.local_workers(cfg(), 1_000_000, files=2000, gpus=0) == want
        assert cluster.tasks_in_process(1_000_000, 2000) == want  # the threads, where threads run them
        assert cluster.tasks_in_process(1_000_000, 100) == cluster.THREADS_TASKS  # a few files: one at a time
        # more rows than the in-process engine takes, or --workers: processes
        assert cluster.engine_for(cfg(), 2000 * 1_500, files=2000, gpus=0) == "local"
        assert cluster.engine_for(cfg(workers=2), 1_000_000, files=2000, gpus=0) == "local"
        # fewer files, or big ones: the size rules as before
        assert cluster.local_workers(cfg(), 1_000_000, files=100, gpus=0) == max(1, cores // 4)
        assert cluster.local_workers(cfg(), 2000 * 20_000, files=2000, gpus=0) == max(1, cores // 4)
        assert cluster.local_workers(cfg(workers=3), 1_000_000, files=2000, gpus=0) == 3  # asked for
        assert cluster.local_workers(cfg(), 1_000_000, files=2000, gpus=2) == max(1, cores // 4)  # GPUs decide
    monkeypatch.setattr(tuning, "available_cores", lambda: 2)
    monkeypatch.setattr(cluster, "default_workers", lambda: 1)
    assert cluster.engine_for(cfg(), 100_000, files=100, gpus=0) == "local-threads"
    monkeypatch.setattr(tuning, "available_cores", lambda: 1)  # one core: nothing to share out
    assert cluster.engine_for(cfg(), 1_000_000, files=2000, gpus=0) == "local-threads"


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container held to 4 of a host's 64 cores (its affinity) gets one CPU worker, not 16."""
    from batchserve import tuning
    from batchserve.pipeline import cluster

    monkeypatch.setattr(cluster.model, "visible_gpu_count", lambda: 0)
    for cores, workers in [(4, 1), (7, 1), (8, 2), (64, 16)]:
        monkeypatch.setattr(tuning, "available_cores", lambda c=cores: c)
        assert cluster.default_workers() == workers
    monkeypatch.setattr(cluster.model, "visible_gpu_count", lambda: 3)
    assert cluster.default_workers() == 3  # one per GPU

"""Fault injection with real processes: a worker SIGKILLed mid-run must not lose or duplicate a row."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import batchserve
from batchserve.pipeline import ProgressEvent
from tests import models
from tests.conftest import FEATURES, features_matrix, make_table, write_dataset


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    data, oracle = models.mlp(len(FEATURES), (256, 256), seed=3)
    model_path = tmp_path / "mlp.onnx"
    model_path.write_bytes(models.set_feature_names(data, FEATURES))
    tables = {f"part-{i:02d}.parquet": make_table(12_000, seed=100 + i) for i in range(12)}
    write_dataset(tmp_path / "in", tables, row_group_size=3000)
    killed: list[int] = []

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as cluster:
        with Client(cluster) as client:
            pids = sorted(client.run(os.getpid).values())
        # 12 files on 2 single-thread workers: at the first commit both are mid-file.

        def kill_a_busy_worker(ev: ProgressEvent) -> None:
            if ev.phase != "file" or killed:
                return
            assert ev.files_done < ev.files_total - 2, "too late to interrupt anything"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        result = batchserve.score(
            model=str(model_path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
            scheduler=cluster.scheduler_address, batch_size=1000, on_progress=kill_a_busy_worker,
        )

    assert killed, "the fault was never injected"
    assert result.manifest.totals.rows == 12 * 12_000
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert not list((tmp_path / "out").rglob("_temporary/**/*.parquet"))
    for rel, table in tables.items():
        got = pq.read_table(tmp_path / "out" / rel)
        assert got.column("id").to_pylist() == table.column("id").to_pylist(), rel  # once each, in order
        np.testing.assert_allclose(got.column("score").to_numpy(), oracle(features_matrix(table)),
                                   rtol=1e-4, atol=1e-4)

"""Many small files: bundled into shared tasks, still one output and one commit per input, every
row against the model's own library; a bad file inside a bundle under both error policies; and the
engine a run used (worker threads for a small job, processes when asked for workers), and many small
files on two task threads of this process, as a 2-core machine runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchserve
from tests.conftest import make_table, write_dataset
from tests.test_pipeline import features_matrix, proba_from

pytestmark = pytest.mark.slow


def _small_dataset(root: Path, n: int = 48, rows: int = 40) -> dict[str, pa.Table]:
    tables = {f"hour={i:02d}/part-0.parquet": make_table(rows, seed=100 + i) for i in range(n)}
    write_dataset(root, tables)
    return tables


def test_small_files_are_bundled_and_every_row_matches_the_library(tmp_path: Path, cluster: str,
                                                                    model_dir: dict) -> None:
    path, clf = model_dir["lgbm"]
    tables = _small_dataset(tmp_path / "in")
    # batch 64: bundles of about 128 rows (three or four 40-row files per task)
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              scheduler=cluster, batch_size=64)
    m = result.manifest
    assert sorted(e.relpath for e in m.outputs) == sorted(tables) and m.totals.rows == 48 * 40
    for rel, table in tables.items():
        got = pq.read_table(tmp_path / "out" / rel)
        assert got.column("id").to_pylist() == table.column("id").to_pylist()  # one output per input, in order
        np.testing.assert_allclose(proba_from(got), clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)
    # drift statistics merged per bundle on the workers still cover every row exactly once
    assert m.drift is not None and all(c.count + c.nulls == 48 * 40 for c in m.drift.features.values())


def _nan_in_one_file(root: Path, n: int = 12, bad: int = 5) -> dict[str, pa.Table]:
    """Small files, one of which has nulls in a float feature: it fails in its task under --nan fail,
    in the middle of a bundle (planning cannot see values, only footers)."""
    tables = {f"hour={i:02d}/part-0.parquet": make_table(40, seed=100 + i, null_every=7 if i == bad else 0)
              for i in range(n)}
    write_dataset(root, tables)
    return tables


def _on_disk(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet") if "_temporary" not in p.parts}


def test_a_bad_file_inside_a_bundle_is_skipped_under_skip(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, _ = model_dir["lgbm"]
    _nan_in_one_file(tmp_path / "in")
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              scheduler=cluster, batch_size=64, nan="fail", on_error="skip")
    m = result.manifest
    assert [f.relpath for f in m.failures] == ["hour=05/part-0.parquet"]
    assert len(m.outputs) == 11 and _on_disk(tmp_path / "out") == {e.relpath for e in m.outputs}
    # the skipped file's rows are in no statistics: the bundle summarises committed files only
    assert m.drift is not None and all(c.count + c.nulls == 11 * 40 for c in m.drift.features.values())
    assert (tmp_path / "out" / "_SUCCESS").exists()
    # for analysts, one row per input file and what became of it (polars)
    import hashlib

    files = batchserve.files(str(tmp_path / "out"))
    assert files.height == 12 and files["status"].to_list().count("scored") == 11
    bad = files.filter(files["status"] == "failed").row(0, named=True)
    assert bad["relpath"] == "hour=05/part-0.parquet" and "NaN" in bad["note"] and bad["output_path"] is None
    for r in files.filter(files["status"] == "scored").iter_rows(named=True):
        data = (tmp_path / "out" / r["relpath"]).read_bytes()
        assert r["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest() and r["output_bytes"] == len(data)
        assert r["output_rows"] == r["input_rows"] == 40


def test_a_bad_file_inside_a_bundle_fails_the_run_and_the_manifest_lists_what_committed(
    tmp_path: Path, cluster: str, model_dir: dict
) -> None:
    path, _ = model_dir["lgbm"]
    _nan_in_one_file(tmp_path / "in")
    with pytest.raises(batchserve.DataError, match="hour=05"):
        batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                         scheduler=cluster, batch_size=64, nan="fail")
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    listed = {e["relpath"] for e in m["outputs"]}
    assert m["run"]["status"] == "failed" and not (tmp_path / "out" / "_SUCCESS").exists()
    assert "hour=05/part-0.parquet" not in listed
    assert _on_disk(tmp_path / "out") == listed  # exactly what is on disk: kept for --resume, nothing more
    # the bundle's files before the bad one committed and came back with the failure
    assert {"hour=04/part-0.parquet"} <= listed


def test_the_engine_a_run_used_is_recorded(tmp_path: Path, model_dir: dict) -> None:
    """No --scheduler and a small plan: worker threads in this process (no process start-up, most
    of a small job's time); --workers asks for worker processes."""
    path, _ = model_dir["lgbm"]
    _small_dataset(tmp_path / "in", n=3)
    threads = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "a"))
    procs = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "b"), workers=1)
    from batchserve.config import resolve_score_config
    from batchserve.pipeline.cluster import engine_for

    # local-threads on a CPU machine of under 8 cores (one default worker); a GPU or more cores: processes
    expected = engine_for(resolve_score_config({"model": "m", "input": "i", "output": "o"}, env={}), 120)
    assert threads.manifest.run.engine is not None and threads.manifest.run.engine.kind == expected
    assert procs.manifest.run.engine is not None and procs.manifest.run.engine.kind == "local"
    assert pq.read_table(tmp_path / "a" / "hour=00" / "part-0.parquet").equals(
        pq.read_table(tmp_path / "b" / "hour=00" / "part-0.parquet"))


def test_batch_size_auto_probes_records_and_scores_every_row_like_the_library(
    tmp_path: Path, cluster: str, model_dir: dict
) -> None:
    """Big enough to probe (>= 102,400 rows): each worker records its inference batch and the rows/s
    it measured; predictions still match LightGBM row for row, across I/O batches run in pieces."""
    path, clf = model_dir["lgbm"]
    tables = {f"part-{i}.parquet": make_table(60_000, seed=200 + i) for i in range(2)}
    write_dataset(tmp_path / "in", tables, row_group_size=20_000)
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              scheduler=cluster)
    engine = result.manifest.run.engine
    assert engine is not None and result.manifest.run.config["batch_auto"] is True
    for w in engine.per_worker:
        # 120k rows: the probe stops at rows/100, one size; nothing smaller won, so batches run whole
        assert w.batch_probe and list(w.batch_probe) == ["1024"] and w.infer_batch is None
        assert w.node_placement == {"CPUExecutionProvider": {"TreeEnsembleClassifier": 1, "Cast": 1}} or (
            w.node_placement and w.node_placement["CPUExecutionProvider"]["TreeEnsembleClassifier"] == 1)
    for rel, table in tables.items():
        got = pq.read_table(tmp_path / "out" / rel)
        np.testing.assert_allclose(proba_from(got), clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)


@pytest.fixture
def two_core_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine rule as on a 2-core machine, with the small-files threshold lowered so a test-sized
    dataset counts as many small files: the run takes two task threads in this process."""
    from batchserve import tuning
    from batchserve.pipeline import cluster

    monkeypatch.setattr(tuning, "available_cores", lambda: 2)
    monkeypatch.setattr(cluster, "SMALL_FILES_MIN", 16)


def test_many_small_files_on_two_threads_score_every_row_once(tmp_path: Path, model_dir: dict,
                                                               two_core_small_files: None) -> None:
    """Two bundles at a time on threads of this process, one ORT session shared by both: every file
    still has exactly one output, in input order, matching the library row for row, and the drift
    statistics count every row once."""
    path, clf = model_dir["lgbm"]
    tables = _small_dataset(tmp_path / "in")
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              batch_size=64)
    m = result.manifest
    assert m.run.engine is not None and m.run.engine.kind == "local-threads"
    assert [w.intra_op_threads for w in m.run.engine.per_worker] == [1]  # two task threads, one ORT thread each
    assert sorted(e.relpath for e in m.outputs) == sorted(tables) and m.totals.rows == 48 * 40
    assert _on_disk(tmp_path / "out") == set(tables) and not (tmp_path / "out" / "_temporary").exists()
    for rel, table in tables.items():
        got = pq.read_table(tmp_path / "out" / rel)
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
        np.testing.assert_allclose(proba_from(got), clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)
    assert m.drift is not None and all(c.count + c.nulls == 48 * 40 for c in m.drift.features.values())


def test_a_bad_small_file_on_two_threads_fails_the_run_and_the_manifest_lists_what_committed(
    tmp_path: Path, model_dir: dict, two_core_small_files: None
) -> None:
    """A bundle fails while the other thread's bundle may still be committing: the run stops both,
    and the manifest lists exactly the files on disk, with no _SUCCESS."""
    path, _ = model_dir["lgbm"]
    _nan_in_one_file(tmp_path / "in", n=24, bad=9)
    with pytest.raises(batchserve.DataError, match="hour=09"):
        batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                         batch_size=64, nan="fail")
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert m["run"]["status"] == "failed" and m["run"]["engine"]["kind"] == "local-threads"
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    listed = {e["relpath"] for e in m["outputs"]}
    assert "hour=09/part-0.parquet" not in listed and _on_disk(tmp_path / "out") == listed
    files = batchserve.files(str(tmp_path / "out"))  # the bad file and any after it: not scored
    assert files.height == 24 and set(files.filter(files["status"] == "scored")["relpath"]) == listed
    assert "hour=09/part-0.parquet" in set(files.filter(files["status"] == "not scored")["relpath"])

"""End-to-end runs of batchserve.score on a real Dask cluster, checked against oracles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchserve
from batchserve.errors import OutputError
from tests import models
from tests.conftest import FEATURES, SAMPLE_DATA, SAMPLE_MODEL, features_matrix, make_table, write_dataset


def read_output(root: Path) -> pa.Table:
    files = sorted(p for p in root.rglob("*.parquet") if not any(s.startswith("_") for s in p.parts[-3:]))
    return pa.concat_tables([pq.read_table(f) for f in files])


def proba_from(table: pa.Table, column: str = "probabilities") -> np.ndarray:
    col = table.column(column)
    if pa.types.is_struct(col.type):
        return np.column_stack([col.combine_chunks().field(i).to_numpy() for i in range(col.type.num_fields)])
    return np.asarray(col.to_pylist(), dtype=np.float32)


def test_sample_data_matches_onnxruntime_directly(tmp_path: Path, cluster: str) -> None:
    out = tmp_path / "out"
    result = batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(out), scheduler=cluster)
    assert (out / "_SUCCESS").exists()
    assert result.manifest.totals.rows == 100_000
    assert not (out / "_temporary").exists()
    sess = ort.InferenceSession(str(SAMPLE_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = json.loads(sess.get_modelmeta().custom_metadata_map["feature_names"])
    for src in sorted(SAMPLE_DATA.rglob("*.parquet")):
        rel = src.relative_to(SAMPLE_DATA)
        inp = pq.read_table(src)
        got = pq.read_table(out / rel)
        assert got.column_names[: inp.num_columns] == inp.column_names
        assert got.select(inp.column_names).equals(inp)  # kept columns untouched, in row order
        label, proba = sess.run(None, {"input": features_matrix(inp, names)})
        np.testing.assert_array_equal(got.column("label").to_numpy(), label)
        expected = np.array([[p[0], p[1]] for p in proba], dtype=np.float32)
        # Same model, same rows; only float32 summation order may differ (1 ulp).
        np.testing.assert_allclose(proba_from(got), expected, rtol=1e-6, atol=2e-7)


@pytest.mark.parametrize(
    ("kind", "label_col", "proba_col"),
    [
        ("logreg", "label", "probabilities"),  # skl2onnx, zipmap disabled: [N,2] tensor
        ("zipmap", "output_label", "output_probability"),  # skl2onnx default: ZipMap
        ("lgbm", "label", "probabilities"),  # onnxmltools default: ZipMap
    ],
)
def test_classifiers_match_their_library(
    kind: str, label_col: str, proba_col: str, tmp_path: Path, cluster: str, model_dir: dict
) -> None:
    path, clf = model_dir[kind]
    tables = {f"part-{i}.parquet": make_table(1500, seed=i) for i in range(3)}
    write_dataset(tmp_path / "in", tables)
    batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                     scheduler=cluster, batch_size=700)
    for rel, table in tables.items():
        got = pq.read_table(tmp_path / "out" / rel)
        x = features_matrix(table)
        np.testing.assert_allclose(proba_from(got, proba_col), clf.predict_proba(x), rtol=1e-4, atol=1e-5)
        agree = (got.column(label_col).to_numpy() == clf.predict(x)).mean()
        assert agree >= 0.999, f"{kind}: labels agree on {agree:.4%} of rows"


def test_multi_output_model_columns_and_values(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, oracle = model_dir["multi"]
    table = make_table(2000, seed=5)
    write_dataset(tmp_path / "in", {"a.parquet": table})
    batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                     scheduler=cluster, features=FEATURES, keep=["id"])
    got = pq.read_table(tmp_path / "out" / "a.parquet")
    assert got.column_names == ["id", "score", "embedding", "bucket"]
    assert got.schema.field("score").type == pa.float32()
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    want = oracle(features_matrix(table))
    models.assert_within(got.column("score").to_numpy(), want["score"], want["score_bound"], "score")
    models.assert_within(np.array(got.column("embedding").to_pylist()), want["embedding"], want["embedding_bound"],
                         "embedding")
    models.assert_bucket(got.column("bucket").to_numpy(), want)


def test_one_input_per_column_is_mapped_by_name(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, oracle = model_dir["percol"]
    table = make_table(1200, seed=6)
    write_dataset(tmp_path / "in", {"a.parquet": table})
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              scheduler=cluster)
    assert result.manifest.model.feature_source == "input-names"
    got = pq.read_table(tmp_path / "out" / "a.parquet")
    cols = {n: features_matrix(table, [n])[:, 0] for n in FEATURES}
    np.testing.assert_allclose(got.column("total").to_numpy(), oracle(cols), rtol=1e-5, atol=1e-5)


def test_hive_layout_many_and_empty_files(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, _ = model_dir["logreg"]
    tables = {
        f"country={c}/day={d}/part-{k}.parquet": make_table(97 * (k + 1), seed=hash((c, d, k)) % 1000)
        for c in ("de", "fr") for d in (1, 2) for k in range(3)
    }
    tables["country=de/day=3/empty.parquet"] = make_table(0)
    write_dataset(tmp_path / "in", tables, row_group_size=50)
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                              scheduler=cluster, batch_size=64)
    assert result.manifest.totals.files == len(tables)
    assert sorted(e.relpath for e in result.manifest.outputs) == sorted(tables)
    empty = pq.read_table(tmp_path / "out" / "country=de/day=3/empty.parquet")
    assert empty.num_rows == 0
    assert "probabilities" in empty.column_names and "label" in empty.column_names
    full = pq.read_table(tmp_path / "out" / "country=fr/day=2/part-2.parquet")
    assert full.schema.field("probabilities").type == empty.schema.field("probabilities").type
    # The output is itself a readable hive dataset with the partition keys restored.
    ds = pq.read_table(tmp_path / "out", partitioning="hive")
    assert ds.num_rows == sum(t.num_rows for t in tables.values())


def test_large_file_split_into_pieces_is_reassembled_in_order(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, clf = model_dir["logreg"]
    table = make_table(10_000, seed=11)
    write_dataset(tmp_path / "in", {"big.parquet": table}, row_group_size=500)
    batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                     scheduler=cluster, split_rows=1500, batch_size=256)
    got = pq.read_table(tmp_path / "out" / "big.parquet")
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    np.testing.assert_allclose(proba_from(got), clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "out").rglob("*.piece-*"))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=4),
    batch_size=st.integers(min_value=1, max_value=900),
    row_group=st.integers(min_value=1, max_value=400),
)
def test_rows_in_equal_rows_out_in_order(
    sizes: list[int], batch_size: int, row_group: int, tmp_path_factory: pytest.TempPathFactory,
    cluster: str, model_dir: dict,
) -> None:
    path, oracle = model_dir["multi"]
    root = tmp_path_factory.mktemp("prop")
    tables = {f"p{i:02d}.parquet": make_table(n, seed=i + 7 * n) for i, n in enumerate(sizes)}
    write_dataset(root / "in", tables, row_group_size=row_group)
    batchserve.score(model=str(path), input=str(root / "in"), output=str(root / "out"), scheduler=cluster,
                     features=FEATURES, batch_size=batch_size, split_rows=max(1, row_group * 2))
    for rel, table in tables.items():
        got = pq.read_table(root / "out" / rel)
        assert got.num_rows == table.num_rows
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
        if table.num_rows:
            want = oracle(features_matrix(table))
            models.assert_within(got.column("score").to_numpy(), want["score"], want["score_bound"], rel)


def test_nulls_in_float_features_become_nan(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, _ = model_dir["multi"]
    table = make_table(300, seed=3, null_every=7)
    write_dataset(tmp_path / "in", {"a.parquet": table})
    batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                     scheduler=cluster, features=FEATURES)
    got = pq.read_table(tmp_path / "out" / "a.parquet").column("score").to_numpy()
    assert np.isnan(got[::7]).all()
    assert not np.isnan(np.delete(got, np.arange(0, 300, 7))).any()


def test_memory_filesystem(cluster: str, inproc_cluster: str, model_dir: dict) -> None:
    import fsspec

    path, oracle = model_dir["multi"]
    fs = fsspec.filesystem("memory")
    table = make_table(800, seed=21)
    with fs.open("/bs-in/k=1/a.parquet", "wb") as fh:
        pq.write_table(table, fh)
    fs.pipe("/bs-model/m.onnx", Path(path).read_bytes())
    batchserve.score(model="memory://bs-model/m.onnx", input="memory://bs-in", output="memory://bs-out",
                     scheduler=inproc_cluster, features=FEATURES)
    assert fs.exists("/bs-out/_SUCCESS")
    with fs.open("/bs-out/k=1/a.parquet", "rb") as fh:
        got = pq.read_table(fh)
    want = oracle(features_matrix(table))
    models.assert_within(got.column("score").to_numpy(), want["score"], want["score_bound"], "score")


def test_s3_round_trip_through_moto_server(s3: dict, cluster: str, model_dir: dict) -> None:
    import s3fs

    path, clf = model_dir["lgbm"]
    fs = s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], endpoint_url=s3["endpoint_url"])
    tables = {"dt=2026-11-20/a.parquet": make_table(900, seed=1), "dt=2026-11-21/b.parquet": make_table(400, seed=2)}
    for rel, table in tables.items():
        with fs.open(f"lake/in/{rel}", "wb") as fh:
            pq.write_table(table, fh, row_group_size=200)
    fs.pipe("lake/models/churn/3/model.onnx", Path(path).read_bytes())
    fs.pipe("lake/models/churn/1/model.onnx", b"older version, must not be chosen")
    result = batchserve.score(model="s3://lake/models/churn", input="s3://lake/in/", output="s3://lake/scored/",
                              scheduler=cluster, storage_options=s3, batch_size=128)
    assert result.manifest.model.version == "3"
    assert result.manifest.run.config["storage_options"]["secret"] == "***"
    fs.invalidate_cache()
    assert fs.exists("lake/scored/_SUCCESS")
    assert not fs.exists("lake/scored/_temporary")
    for rel, table in tables.items():
        with fs.open(f"lake/scored/{rel}", "rb") as fh:
            got = pq.read_table(fh)
        np.testing.assert_allclose(proba_from(got), clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)


def test_non_empty_output_is_refused_untouched(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, _ = model_dir["logreg"]
    write_dataset(tmp_path / "in", {"a.parquet": make_table(100)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(out), scheduler=cluster)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_overwrite_replaces_previous_output(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    path, _ = model_dir["logreg"]
    write_dataset(tmp_path / "in", {"a.parquet": make_table(100), "b.parquet": make_table(50, seed=1)})
    out = tmp_path / "out"
    batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(out), scheduler=cluster)
    (tmp_path / "in" / "b.parquet").unlink()
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(out), scheduler=cluster,
                              overwrite=True)
    assert [e.relpath for e in result.manifest.outputs] == ["a.parquet"]
    assert not (out / "b.parquet").exists(), "stale output of the earlier run must go"
    assert (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_local_cluster_is_started_and_closed(tmp_path: Path, model_dir: dict) -> None:
    from multiprocessing import resource_tracker

    import psutil

    path, _ = model_dir["logreg"]
    write_dataset(tmp_path / "in", {"a.parquet": make_table(500)})
    # multiprocessing's resource tracker is one long-lived helper per process, started by the first
    # cluster: start it now, so the test holds whether or not another test started a cluster first.
    resource_tracker.ensure_running()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = batchserve.score(model=str(path), input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=1)
    engine = result.manifest.run.engine
    assert engine is not None and engine.kind == "local" and engine.workers == 1
    assert engine.per_worker[0].provider == "CPUExecutionProvider"
    leftover = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not [p for p in leftover if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

"""_SUCCESS is a promise: every way a run could lose, delete, mix or misreport data, through the
real console script (and real processes: a Dask cluster, moto's S3 server, `dask worker`s in
another working directory). Each test here failed on the code before issue 7."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchserve import io as bio
from tests.conftest import FEATURES, features_matrix, make_table, write_dataset
from tests.test_cli import BIN, assert_one_error_line, run_cli

#: Every test here runs the real console script or real processes.
pytestmark = pytest.mark.slow


def linear_model(
    n: int = len(FEATURES), *, batch: int | str = "N", scalar: bool = False, ir: int | None = None,
    opset: int = 17, meta: dict[str, str] | None = None, seed: int = 0,
) -> tuple[bytes, np.ndarray]:
    """``score = X @ w`` built with onnx.helper, and ``w`` for a float64 oracle."""
    w = np.random.default_rng(seed).normal(size=(n, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["prod"])]
    if scalar:
        nodes.append(helper.make_node("ReduceSum", ["prod"], ["score"], keepdims=0))
        out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [])
    else:
        nodes.append(helper.make_node("Identity", ["prod"], ["score"]))
        out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, n])],
                              [out], [numpy_helper.from_array(w, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir if ir is not None else 8
    helper.set_model_props(proto, {"feature_names": json.dumps(FEATURES), **(meta or {})})
    return proto.SerializeToString(), w


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    data, w = linear_model()
    path = tmp_path_factory.mktemp("linear") / "linear.onnx"
    path.write_bytes(data)
    return path, w


def oracle(table: pa.Table, w: np.ndarray) -> np.ndarray:
    return features_matrix(table).astype(np.float64) @ w.astype(np.float64)[:, 0]


def assert_scored(out: Path, rel: str, table: pa.Table, w: np.ndarray) -> None:
    got = pq.read_table(out / rel)
    assert got.column("id").to_pylist() == table.column("id").to_pylist(), rel
    want = oracle(table, w)
    np.testing.assert_allclose(np.asarray(got.column("score").to_pylist(), dtype=np.float64).ravel(), want,
                               rtol=1e-5, atol=1e-5 * (1 + np.abs(want).max()))


def score(model: Path, inp: Path | str, out: Path | str, cluster: str, *extra: str,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(BIN), "score", "--model", str(model), "--input", str(inp), "--output", str(out),
            "--scheduler", cluster, *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=cwd)


def data_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet") if "_temporary" not in p.parts}


def manifest_of(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1. --overwrite never deletes the input, nor anything a batchserve run did not write -------


@pytest.mark.parametrize("layout", ["input-inside-output", "input-file-in-output", "glob-in-output"])
def test_overlapping_input_and_output_are_refused_before_anything_is_touched(
    tmp_path: Path, linear: tuple[Path, np.ndarray], cluster: str, layout: str
) -> None:
    data = tmp_path / "data"
    write_dataset(data / "in", {"part-0.parquet": make_table(50), "part-1.parquet": make_table(40, seed=1)})
    (data / "notes.txt").write_text("mine")
    inp, out = {
        "input-inside-output": (data / "in", data),
        "input-file-in-output": (data / "in" / "part-0.parquet", data / "in"),
        "glob-in-output": (str(data / "in" / "*.parquet"), data),
    }[layout]
    before = tree(data)
    proc = score(linear[0], inp, out, cluster, "--overwrite")
    assert proc.returncode == 1
    assert_one_error_line(proc, "input and output overlap")
    assert tree(data) == before


def test_overwrite_replaces_only_what_batchserve_wrote(tmp_path: Path, linear: tuple[Path, np.ndarray],
                                                       cluster: str) -> None:
    model, w = linear
    tables = {"a.parquet": make_table(60), "gone/b.parquet": make_table(30, seed=1)}
    write_dataset(tmp_path / "in", tables)
    out = tmp_path / "out"
    assert score(model, tmp_path / "in", out, cluster).returncode == 0
    (out / "README.txt").write_text("a note somebody keeps beside the data")
    shutil.rmtree(tmp_path / "in" / "gone")  # the next run no longer produces gone/b.parquet
    proc = score(model, tmp_path / "in", out, cluster, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert data_files(out) == {"a.parquet"}  # the earlier run's stale output is gone ...
    assert (out / "README.txt").read_text().startswith("a note")  # ... a foreign file is not
    assert_scored(out, "a.parquet", tables["a.parquet"], w)
    # A foreign Parquet file (one no run wrote) makes --overwrite refuse, touching nothing.
    pq.write_table(make_table(5, seed=7), out / "theirs.parquet")
    before = tree(out)
    proc = score(model, tmp_path / "in", out, cluster, "--overwrite")
    assert proc.returncode == 1
    assert_one_error_line(proc, "no batchserve run wrote", "theirs.parquet")
    assert tree(out) == before


# --- 2. the output lock holds on S3 --------------------------------------------------------------


def test_s3_lock_create_is_exclusive_among_racing_threads(s3: dict) -> None:
    """PutObject with If-None-Match: * against moto: of 8 racing creators exactly one wins."""
    from concurrent.futures import ThreadPoolExecutor

    url = "s3://lake/lock-race/_batchserve.lock"

    def take(i: int) -> str:
        try:
            return "atomic" if bio.create_exclusive(url, json.dumps({"i": i}), s3) else "best-effort"
        except FileExistsError:
            return "lost"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(take, range(8)))
    assert sorted(outcomes) == ["atomic"] + ["lost"] * 7


@pytest.mark.slow
@pytest.mark.heavy
def test_two_runs_into_one_s3_output_exactly_one_wins(tmp_path: Path, s3: dict, cluster: str,
                                                      linear: tuple[Path, np.ndarray]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], endpoint_url=s3["endpoint_url"])
    tables = {f"p{i}.parquet": make_table(400, seed=50 + i) for i in range(6)}
    for rel, t in tables.items():
        with fs.open(f"lake/race-in/{rel}", "wb") as fh:
            pq.write_table(t, fh)
    opts = [a for k, v in s3.items() for a in ("--storage-option", f"{k}={v}")]
    args = [str(BIN), "score", "--model", str(linear[0]), "--input", "s3://lake/race-in/",
            "--output", "s3://lake/race-out/", "--scheduler", cluster, *opts]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, err in results if rc == 1)
    assert "another batchserve run" in loser or "not empty" in loser, loser
    fs.invalidate_cache()
    m = json.loads(fs.cat("lake/race-out/_manifest.json"))
    assert fs.exists("lake/race-out/_SUCCESS") and m["run"]["status"] == "succeeded"
    assert sorted(e["relpath"] for e in m["outputs"]) == sorted(tables)
    for e in m["outputs"]:  # every file is the winner's: checksum and stamp agree with its manifest
        data = fs.cat(f"lake/race-out/{e['relpath']}")
        assert e["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
        meta = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.metadata
        assert meta[bio.OWNER_KEY].decode() == m["run"]["id"]


# --- 3. symbolic links are followed, loops end, broken links fail by name ------------------------


def test_symlinked_files_and_folders_are_scored_and_loops_end(tmp_path: Path, linear: tuple[Path, np.ndarray],
                                                              cluster: str) -> None:
    model, w = linear
    elsewhere = write_dataset(tmp_path / "elsewhere", {"day=2/p.parquet": make_table(30, seed=2),
                                                       "x.parquet": make_table(20, seed=3)})
    inp = write_dataset(tmp_path / "in", {"day=1/p.parquet": make_table(40, seed=1)})
    (inp / "day=2").symlink_to(elsewhere / "day=2", target_is_directory=True)
    (inp / "linked.parquet").symlink_to(elsewhere / "x.parquet")
    (inp / "day=1" / "loop").symlink_to(inp, target_is_directory=True)  # a cycle back to the root
    out = tmp_path / "out"
    proc = score(model, inp, out, cluster)
    assert proc.returncode == 0, proc.stderr
    assert data_files(out) == {"day=1/p.parquet", "day=2/p.parquet", "linked.parquet"}
    assert manifest_of(out)["totals"]["rows"] == 90
    assert_scored(out, "linked.parquet", make_table(20, seed=3), w)
    (inp / "broken.parquet").symlink_to(tmp_path / "nowhere.parquet")
    proc = score(model, inp, tmp_path / "out2", cluster)
    assert proc.returncode == 1
    assert_one_error_line(proc, "broken symbolic link", "broken.parquet")


def test_symlink_into_the_output_counts_as_overlap(tmp_path: Path, linear: tuple[Path, np.ndarray],
                                                    cluster: str) -> None:
    out = write_dataset(tmp_path / "out", {"x.parquet": make_table(10)})
    inp = write_dataset(tmp_path / "in", {"a.parquet": make_table(10)})
    (inp / "b.parquet").symlink_to(out / "x.parquet")
    proc = score(linear[0], inp, out, cluster, "--overwrite")
    assert proc.returncode == 1 and "input and output overlap" in proc.stderr
    assert (out / "x.parquet").exists()


# --- 4. --on-error skip decides the schema by the model and the majority -------------------------


def _odd(n: int, seed: int) -> pa.Table:
    t = make_table(n, seed=seed)
    return t.set_column(t.schema.get_field_index("f2"), "f2", pa.array(np.arange(n, dtype=np.float64)))


def test_on_error_skip_keeps_the_majority_when_the_odd_file_sorts_first(
    tmp_path: Path, linear: tuple[Path, np.ndarray], cluster: str
) -> None:
    model, w = linear
    good = {f"{c}.parquet": make_table(25, seed=i) for i, c in enumerate("bcdf")}
    # two odd files of one schema: planning checks a schema once when it passes, never when it fails
    write_dataset(tmp_path / "in", {"a.parquet": _odd(25, 9), **good, "e.parquet": _odd(25, 8)})
    out = tmp_path / "out"
    proc = score(model, tmp_path / "in", out, cluster, "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    assert [f["relpath"] for f in m["failures"]] == ["a.parquet", "e.parquet"]
    assert all("expected int32, found double" in f["error"] for f in m["failures"])
    assert data_files(out) == set(good)
    for rel, t in good.items():
        assert_scored(out, rel, t, w)


def test_files_that_disagree_without_a_majority_fail_whatever_the_policy(
    tmp_path: Path, linear: tuple[Path, np.ndarray], cluster: str
) -> None:
    write_dataset(tmp_path / "in", {"a.parquet": _odd(10, 1), "b.parquet": make_table(10, seed=2)})
    for extra in ((), ("--on-error", "skip")):
        proc = score(linear[0], tmp_path / "in", tmp_path / f"out{len(extra)}", cluster, *extra)
        assert proc.returncode == 1
        assert_one_error_line(proc, "no majority decides", "'f2'", "double in 1 file", "int32 in 1 file")
        assert not (tmp_path / f"out{len(extra)}").exists()


# --- 5. a resumed run holds exactly the current inputs' outputs ----------------------------------


def test_resume_drops_the_output_of_an_input_deleted_since(tmp_path: Path, linear: tuple[Path, np.ndarray],
                                                            cluster: str) -> None:
    model, _ = linear
    tables = {f"p{i}.parquet": make_table(20, seed=i) for i in range(4)}
    write_dataset(tmp_path / "in", tables)
    out = tmp_path / "out"
    assert score(model, tmp_path / "in", out, cluster).returncode == 0
    (tmp_path / "in" / "p2.parquet").unlink()
    proc = score(model, tmp_path / "in", out, cluster, "--resume")
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    assert data_files(out) == {e["relpath"] for e in m["outputs"]} == {"p0.parquet", "p1.parquet", "p3.parquet"}
    assert {e["status"] for e in m["outputs"]} == {"reused"} and m["totals"]["rows"] == 60
    assert (out / "_SUCCESS").exists()


# --- 7. --scheduler with relative paths: resolved on the client ----------------------------------


@pytest.mark.slow
def test_relative_paths_with_workers_in_another_directory(tmp_path: Path, dask_processes: str,
                                                           linear: tuple[Path, np.ndarray]) -> None:
    model, w = linear
    work = tmp_path / "analyst"
    tables = {"a.parquet": make_table(30), "b.parquet": make_table(20, seed=1)}
    write_dataset(work / "in", tables)
    shutil.copy(model, work / "m.onnx")
    proc = score(Path("m.onnx"), "in", "out", dask_processes, cwd=work)
    assert proc.returncode == 0, proc.stderr
    out = work / "out"
    assert data_files(out) == set(tables) and (out / "_SUCCESS").exists()
    m = manifest_of(out)
    assert {e["path"] for e in m["outputs"]} == {str(out / rel) for rel in tables}
    for rel, t in tables.items():
        assert_scored(out, rel, t, w)


def test_client_side_check_finds_a_committed_file_that_is_not_there(tmp_path: Path) -> None:
    """The last check before _SUCCESS: one listing, from the client's side."""
    from batchserve import manifest
    from batchserve.config import resolve_score_config
    from batchserve.pipeline import output as pipeline

    out = write_dataset(tmp_path / "out", {"a.parquet": make_table(5)})
    cfg = resolve_score_config({"model": "m", "input": "i", "output": str(out)}, env={})
    size = (out / "a.parquet").stat().st_size
    ok = [manifest.FileEntry(str(out / "a.parquet"), "a.parquet", 5, size)]
    assert pipeline.verify_outputs(cfg, ok, pipeline.OutputSurvey()) is None
    missing = [*ok, manifest.FileEntry(str(out / "b.parquet"), "b.parquet", 5, size)]
    assert "b.parquet is missing" in str(pipeline.verify_outputs(cfg, missing, pipeline.OutputSurvey()))
    (out / "c.parquet").write_bytes((out / "a.parquet").read_bytes())
    assert "did not write (e.g. c.parquet)" in str(pipeline.verify_outputs(cfg, ok, pipeline.OutputSurvey()))


# --- 8. manifests and profiles are strict JSON --------------------------------------------------


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_constant_reference_feature_gives_null_with_a_reason_and_strict_json(
    tmp_path: Path, linear: tuple[Path, np.ndarray], cluster: str
) -> None:
    ref_table = make_table(200)
    ref_table = ref_table.set_column(ref_table.schema.get_field_index("f5"), "f5", pa.array(np.full(200, 1.5)))
    write_dataset(tmp_path / "ref", {"r.parquet": ref_table})
    write_dataset(tmp_path / "in", {"a.parquet": make_table(300, seed=4)})
    prof = tmp_path / "reference.json"
    proc = run_cli("profile", "--input", str(tmp_path / "ref"), "--model", str(linear[0]), "--output", str(prof),
                   "--scheduler", cluster)
    assert proc.returncode == 0, proc.stderr
    _strict_json(prof.read_text())
    out = tmp_path / "out"
    proc = score(linear[0], tmp_path / "in", out, cluster, "--reference", str(prof))
    assert proc.returncode == 0, proc.stderr
    m = _strict_json((out / "_manifest.json").read_text())
    f5 = m["drift"]["features"]["f5"]
    assert f5["wasserstein"] is None and "constant" in f5["undefined"]["wasserstein"]
    # KS against the constant 1.5 is the share of current values below it (exponential data): ~1 - e^-1.5
    cur = make_table(300, seed=4).column("f5").to_numpy()
    assert f5["ks"] == pytest.approx(float(np.mean(cur < 1.5)), abs=0.02)
    # a boolean feature has two values: it gets every numeric metric, exactly, plus the categorical view
    f4 = m["drift"]["features"]["f4"]
    assert f4["kind"] == "numeric" and f4["ks"] is not None and f4["wasserstein"] is not None
    assert set(f4["categorical"]) == {"psi", "js", "unseen_categories"}

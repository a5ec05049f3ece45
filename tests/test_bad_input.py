"""Bad input through the real console script: exit 1, one line naming file or column, nothing lost."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FEATURES, make_table, write_dataset
from tests.test_cli import assert_one_error_line, run_cli


def score_args(model: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["score", "--model", str(model), "--input", str(inp), "--output", str(out), *extra]


def test_file_whose_schema_differs_from_the_rest(tmp_path: Path, model_dir: dict, cluster: str) -> None:
    other = make_table(50, seed=2)
    other = other.set_column(other.schema.get_field_index("f2"), "f2", pa.array(np.arange(50, dtype=np.float64)))
    write_dataset(tmp_path / "in", {"a.parquet": make_table(50), "b.parquet": other, "c.parquet": make_table(9)})
    proc = run_cli(*score_args(model_dir["logreg"][0], tmp_path / "in", tmp_path / "out", "--scheduler", cluster))
    assert proc.returncode == 1
    assert_one_error_line(proc, "schema differs from most input files", "expected int32, found double",
                          "b.parquet", "'f2'")
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_integer_model_input_with_nulls(tmp_path: Path, model_dir: dict, cluster: str) -> None:
    t = pa.table({"a": pa.array([1, None, 3], pa.int64()), "b": pa.array([1, 2, 3], pa.int64())})
    write_dataset(tmp_path / "in", {"x.parquet": t})
    proc = run_cli(*score_args(model_dir["int_input"][0], tmp_path / "in", tmp_path / "out",
                               "--features", "a,b", "--scheduler", cluster))
    assert proc.returncode == 1
    assert_one_error_line(proc, "null(s) but the model input is int64", "x.parquet", "'a'")
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_nan_policy(tmp_path: Path, model_dir: dict, cluster: str) -> None:
    write_dataset(tmp_path / "in", {"x.parquet": make_table(200, null_every=50)})
    ok = run_cli(*score_args(model_dir["multi"][0], tmp_path / "in", tmp_path / "pass", "--features", ",".join(FEATURES),
                             "--scheduler", cluster))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(*score_args(model_dir["multi"][0], tmp_path / "in", tmp_path / "fail", "--features",
                              ",".join(FEATURES), "--nan", "fail", "--scheduler", cluster))
    assert bad.returncode == 1
    assert_one_error_line(bad, "NaN, inf or null", "--nan fail", "x.parquet", "'f0'")
    assert not list((tmp_path / "fail").rglob("*.parquet")) and not (tmp_path / "fail" / "_SUCCESS").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; permissions cannot be exercised")
def test_unwritable_output(tmp_path: Path, model_dir: dict) -> None:
    write_dataset(tmp_path / "in", {"x.parquet": make_table(10)})
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    proc = run_cli(*score_args(model_dir["logreg"][0], tmp_path / "in", ro / "out"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "not writable", "ro/out")


def test_output_below_a_file_is_not_writable(tmp_path: Path, model_dir: dict) -> None:
    """Runs as root too (CI does): a regular file where a parent folder must go."""
    write_dataset(tmp_path / "in", {"x.parquet": make_table(10)})
    (tmp_path / "afile").write_text("x")
    proc = run_cli(*score_args(model_dir["logreg"][0], tmp_path / "in", tmp_path / "afile" / "out"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "not writable", "afile/out")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_that_is_a_file(tmp_path: Path, model_dir: dict) -> None:
    write_dataset(tmp_path / "in", {"x.parquet": make_table(10)})
    (tmp_path / "out").write_text("not a folder")
    proc = run_cli(*score_args(model_dir["logreg"][0], tmp_path / "in", tmp_path / "out"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "output must be a folder", "out")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_missing_object_store_credentials(tmp_path: Path, model_dir: dict, s3: dict) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    import subprocess
    import sys

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "batchserve"), "score", "--model", str(model_dir["logreg"][0]),
         "--input", "s3://lake/nope/", "--output", str(tmp_path / "out"),
         "--storage-option", f"endpoint_url={s3['endpoint_url']}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1
    assert_one_error_line(proc, "no credentials for this object store", "AWS_ACCESS_KEY_ID", "s3://lake/nope")


# A fuzz test: random schemas and values never produce a traceback; when a table scores, every row
# is there, in order, with the values raw onnxruntime gives for the same float32 features.
_NUMERIC = [pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.float32(), pa.float64(), pa.bool_()]
# Numeric types six times as likely as the rest: all six columns are numeric with probability
# (42/45)^6 = 0.66, so about two tables in three score and have their values checked.
column_types = st.sampled_from(_NUMERIC * 6 + [pa.string(), pa.list_(pa.float64()), pa.date32()])
values_st = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 100))


def _coerce(values: list, t: pa.DataType) -> pa.Array:
    def one(v):
        if v is None:
            return None
        if pa.types.is_boolean(t):
            return bool(v)
        if pa.types.is_integer(t):
            if not np.isfinite(v):
                return None
            return int(max(min(v, 100), 0 if pa.types.is_unsigned_integer(t) else -100))
        if pa.types.is_string(t):
            return str(v)
        if pa.types.is_list(t):
            return [float(v)]
        if pa.types.is_date(t):
            return None
        return float(v)

    return pa.array([one(v) for v in values], type=t)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """Six columns named like the model's features, of random types and values, maybe an id column."""
    n = draw(st.integers(0, 60))
    cols = {}
    if draw(st.booleans()):
        cols["id"] = pa.array([f"r{i}" for i in range(n)])
    for name in FEATURES:
        cols[name] = _coerce(draw(st.lists(values_st, min_size=n, max_size=n)), draw(column_types))
    return pa.table(cols)


def _raw_ort(model_path: str, table: pa.Table) -> np.ndarray:
    """The score onnxruntime itself gives for the features as batchserve feeds them (nulls as NaN)."""
    import onnxruntime as ort

    x = np.empty((table.num_rows, len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        col = table.column(name)
        col = col.cast(pa.int8()) if pa.types.is_boolean(col.type) else col
        with np.errstate(over="ignore"):  # doubles beyond float32 become inf, as batchserve makes them
            x[:, j] = col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"X": x})[0][:, 0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), nan=st.sampled_from(["pass", "fail"]), batch_size=st.integers(1, 40))
def test_fuzz_never_a_traceback_or_a_wrong_row_count(table: pa.Table, nan: str, batch_size: int, tmp_path_factory,
                                                      model_dir: dict, cluster: str) -> None:
    import batchserve
    from batchserve.errors import BatchserveError

    root = tmp_path_factory.mktemp("fuzz")
    write_dataset(root / "in", {"x.parquet": table}, row_group_size=17)
    path = str(model_dir["multi"][0])
    try:
        result = batchserve.score(model=path, input=str(root / "in"), output=str(root / "out"),
                                  scheduler=cluster, features=FEATURES, nan=nan, batch_size=batch_size)
    except BatchserveError as exc:
        # A user error: one line that says where to look, and nothing marked complete.
        assert "\n" not in str(exc) and (exc.path or exc.column), str(exc)
        assert not (root / "out" / "_SUCCESS").exists()
        return
    assert result.manifest.totals.rows == table.num_rows
    got = pq.read_table(root / "out" / "x.parquet")
    assert got.num_rows == table.num_rows
    if "id" in table.column_names:
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
    if table.num_rows:
        want = _raw_ort(path, table)
        have = got.column("score").to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(np.isnan(have), np.isnan(want))
        finite = np.isfinite(want)
        np.testing.assert_array_equal(have[~finite], want[~finite])
        scale = 1 + float(np.abs(want[finite]).max(initial=0))
        np.testing.assert_allclose(have[finite], want[finite], rtol=1e-6, atol=1e-6 * scale)


# Paths: spaces, unicode, brackets and glob characters in folder and file names, reached directly
# or through a symbolic link. A path that exists is scored literally: every row once, in order.
path_parts = st.lists(
    st.sampled_from([*"ab z_-.[]*?{}()é漢😀=,", "run 1", "date=2026-11-05"]), min_size=1, max_size=8,
).map("".join).filter(lambda s: s.strip(" .") == s and not s.startswith(("_", ".")) and s not in (".", ".."))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=path_parts, name=path_parts, via_link=st.booleans(), explicit_file=st.booleans())
def test_fuzz_paths_are_taken_literally(folder: str, name: str, via_link: bool, explicit_file: bool,
                                        tmp_path_factory, model_dir: dict, cluster: str) -> None:
    import batchserve

    root = tmp_path_factory.mktemp("paths")
    table = make_table(23, seed=len(folder) + len(name))
    data = write_dataset(root / "data" / folder, {f"{name}.parquet": table})
    inp = data
    if via_link:
        (root / "link").symlink_to(data, target_is_directory=True)
        inp = root / "link"
    target = inp / f"{name}.parquet" if explicit_file else inp
    result = batchserve.score(model=str(model_dir["multi"][0]), input=str(target), output=str(root / "out"),
                              scheduler=cluster, features=FEATURES)
    assert result.manifest.totals.rows == 23
    got = pq.read_table(root / "out" / f"{name}.parquet")
    assert got.column("id").to_pylist() == table.column("id").to_pylist()


# Option values: whatever is typed, the CLI answers with one line (or a usage error), never a traceback.
option_values = st.one_of(
    st.text(max_size=12), st.integers(-10**25, 10**25).map(str), st.sampled_from(["", "=", "a=", "=b", "1e20", "nan"]),
)
options = st.sampled_from(["--batch-size", "--workers", "--scheduler", "--storage-option", "--device", "--on-error",
                           "--nan", "--retries", "--split-rows", "--max-failed-files", "--max-drift-share",
                           "--drift-metric", "--drift-threshold", "--model-version", "--features", "--keep", "--job",
                           "--reference", "--prefix"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(options, option_values), min_size=1, max_size=3))
def test_fuzz_option_values_never_a_traceback(pairs: list[tuple[str, str]], tmp_path_factory) -> None:
    from typer.testing import CliRunner

    from batchserve.cli import app

    root = tmp_path_factory.mktemp("opts")
    args = ["score", "--model", str(root / "none.onnx"), "--input", str(root / "in"), "--output", str(root / "out")]
    for opt, value in pairs:
        args += [opt, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (1, 2), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert not (root / "out").exists()

"""The CLI contract: exit codes, one-line errors, nothing written on failure, help examples.

Error cases run the real console script in a subprocess (what cron and Airflow
see); the rest use Typer's CliRunner in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchserve.cli import app
from tests.conftest import FEATURES, REPO, SAMPLE_DATA, SAMPLE_MODEL, make_table, write_dataset

#: Every test here runs the real console script or real processes.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "batchserve"
runner = CliRunner()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "in", {"a.parquet": make_table(200), "sub/b.parquet": make_table(100, seed=1)})


@pytest.mark.parametrize("command", ["score", "inspect", "validate", "profile", "report"])
def test_every_command_help_shows_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"Example: batchserve {command}" in result.output


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("score", "inspect", "validate", "profile", "report"):
        assert cmd in result.output


def test_score_end_to_end_through_console_script_on_existing_cluster(
    tmp_path: Path, dask_processes: str
) -> None:
    out = tmp_path / "out"
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--output", str(out),
                   "--scheduler", dask_processes, "--batch-size", "4096")
    assert proc.returncode == 0, proc.stderr
    assert "scored 10 file(s), 100,000 rows" in proc.stdout
    assert "manifest:" in proc.stdout
    m = json.loads((out / "_manifest.json").read_text())
    assert m["run"]["engine"]["kind"] == "scheduler"
    assert m["run"]["engine"]["address"] == dask_processes
    assert m["run"]["engine"]["workers"] == 2
    assert {w["provider"] for w in m["run"]["engine"]["per_worker"]} == {"CPUExecutionProvider"}
    assert (out / "_SUCCESS").exists()
    # Non-terminal stderr gets plain log lines (cron/Airflow), not a progress bar.
    run_id = m["run"]["id"]
    committed = [ln for ln in proc.stderr.splitlines() if " committed " in ln]
    assert committed and all(ln.split()[1:4] == ["INFO", "batchserve", f"[{run_id}]"] for ln in committed)
    assert all(ln.split()[0].endswith("Z") for ln in proc.stderr.splitlines())  # UTC, with its zone


def test_job_file_and_env_precedence(tmp_path: Path, dataset: Path, cluster: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[score]\nmodel = "{SAMPLE_MODEL}"\ninput = "{dataset}"\noutput = "{tmp_path / "from_job"}"\n'
        f'features = {json.dumps(FEATURES[:2])}\nfeatures_override = true\nbatch_size = 10\n'
    )
    # The job's model expects 8 features; the env overrides features, the flag overrides the output.
    result = runner.invoke(
        app, ["score", "--job", str(job), "--output", str(tmp_path / "from_flag"), "--scheduler", cluster,
              "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--quiet"],
        env={"BATCHSERVE_BATCH_SIZE": "5000", "BATCHSERVE_FEATURES": ""},
    )
    assert result.exit_code == 1  # job file's 2 features do not fit the 8-feature model
    assert "takes 8 features but 2 were given" in result.output
    result = runner.invoke(
        app, ["score", "--job", str(job), "--output", str(tmp_path / "from_flag"), "--scheduler", cluster,
              "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--quiet"],
        env={"BATCHSERVE_BATCH_SIZE": "5000",
             "BATCHSERVE_FEATURES": "amount,hour,merchant_category,distance_km,card_age_days,n_tx_24h,"
                                    "is_online,is_foreign"},
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "from_flag" / "_manifest.json").read_text())["run"]["config"]
    assert cfg["batch_size"] == 5000  # env beats job file
    assert cfg["output"] == str(tmp_path / "from_flag")  # flag beats job file
    assert not (tmp_path / "from_job").exists()


def test_inspect_json_and_table() -> None:
    result = runner.invoke(app, ["inspect", str(SAMPLE_MODEL), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["version"] == "1"
    assert len(info["sha256"]) == 64
    assert info["inputs"][0]["shape"] == [None, 8]
    assert info["feature_names"][0] == "amount"
    table = runner.invoke(app, ["inspect", str(SAMPLE_MODEL)])
    assert table.exit_code == 0 and "probabilities" in table.output and info["sha256"] in table.output


def test_validate_ok_and_failure(dataset: Path, tmp_path: Path) -> None:
    ok = run_cli("validate", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 10 file(s), 100,000 rows; features (metadata): amount,")
    bad = run_cli("validate", "--model", str(SAMPLE_MODEL), "--input", str(dataset))
    assert bad.returncode == 1
    assert_one_error_line(bad, "feature column is missing", "a.parquet", "'amount'")


def _score_args(model: Path | str, inp: Path | str, out: Path, *extra: str) -> list[str]:
    return ["score", "--model", str(model), "--input", str(inp), "--output", str(out), *extra]


def test_errors_exit_1_with_one_line_and_write_nothing(tmp_path: Path, dataset: Path, model_dir: dict) -> None:
    out = tmp_path / "out"
    bad_type = write_dataset(tmp_path / "badtype", {"x.parquet": make_table(10).set_column(
        1, "f0", pa.array([str(i) for i in range(10)]))})
    (tmp_path / "empty_dir").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "c.parquet").write_bytes(b"PAR1 not really parquet")
    clash = write_dataset(tmp_path / "clash", {"x.parquet": make_table(10).append_column(
        "label", pa.array([0] * 10))})
    cases = [
        (_score_args(tmp_path / "nope.onnx", dataset, out), ["model not found", "nope.onnx"]),
        (_score_args(model_dir["not_onnx"][0], dataset, out), ["not an ONNX model", "not_onnx.onnx"]),
        (_score_args(model_dir["string_input"][0], dataset, out, "--features", "f0"), ["tensor(string)"]),
        (_score_args(SAMPLE_MODEL, tmp_path / "missing", out), ["input not found", "missing"]),
        (_score_args(SAMPLE_MODEL, tmp_path / "empty_dir", out), ["no Parquet files found", "empty_dir"]),
        (_score_args(SAMPLE_MODEL, dataset, out), ["feature column is missing", "'amount'", "a.parquet"]),
        (_score_args(model_dir["logreg"][0], bad_type, out), ["not numeric", "'f0'", "x.parquet", "string"]),
        (_score_args(model_dir["logreg"][0], corrupt, out), ["not a readable Parquet file", "c.parquet"]),
        (_score_args(model_dir["logreg"][0], dataset, out, "--features", "f0,f1"),
         ["--features f0,f1 contradicts the model's own feature_names f0,f1,f2,f3,f4,f5", "other columns"]),
        (_score_args(model_dir["logreg"][0], dataset, out, "--features", "f0,f1", "--features-override"),
         ["takes 6 features but 2 were given"]),
        (_score_args(model_dir["multi"][0], dataset, out), ["pass --features", "X[N, 6]"]),
        (_score_args(model_dir["lgbm"][0], clash, out), ["would overwrite an input column", "'label'", "--prefix"]),
        (_score_args(model_dir["logreg"][0], dataset, out, "--keep", "id,nope"), ["--keep is missing", "'nope'"]),
        (_score_args(model_dir["logreg"][0], dataset, dataset / "scored"), ["input and output overlap"]),
        (_score_args(SAMPLE_MODEL, dataset, out, "--model-version", "7"), ["model version 7, which does not exist", "complete versions: 1"]),
    ]
    for args, needles in cases:
        proc = run_cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert_one_error_line(proc, *needles)
        assert not out.exists() or not any(out.rglob("*.parquet")), args
        assert not (out / "_SUCCESS").exists()


def test_non_empty_output_refused_with_exit_1(tmp_path: Path, dataset: Path, model_dir: dict) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"old")
    proc = run_cli(*_score_args(model_dir["logreg"][0], dataset, out))
    assert proc.returncode == 1
    assert_one_error_line(proc, "not empty", "--overwrite", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["old.parquet"]
    assert (out / "old.parquet").read_bytes() == b"old"


def test_cuda_without_provider_is_an_error_not_a_fallback(tmp_path: Path, dataset: Path, model_dir: dict) -> None:
    from batchserve.model import visible_gpu_count

    if visible_gpu_count():
        pytest.skip("a GPU is visible; the no-CUDA path cannot be exercised here")
    out = tmp_path / "out"
    proc = run_cli(*_score_args(model_dir["logreg"][0], dataset, out, "--device", "cuda", "--workers", "1"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "--device cuda requested")
    assert not (out / "_SUCCESS").exists() and not list(out.rglob("*.parquet"))


def test_usage_errors_exit_2() -> None:
    proc = run_cli("score", "--batch-size", "lots")
    assert proc.returncode == 2
    proc = run_cli("frobnicate")
    assert proc.returncode == 2


def test_debug_shows_traceback(tmp_path: Path, dataset: Path) -> None:
    proc = run_cli(*_score_args(tmp_path / "nope.onnx", dataset, tmp_path / "out"), "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "error: model not found" in proc.stderr


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "batchserve", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "score" in proc.stdout


def test_empty_input_file_is_scored_not_an_error(tmp_path: Path, model_dir: dict, cluster: str) -> None:
    inp = write_dataset(tmp_path / "in", {"empty.parquet": make_table(0)})
    result = runner.invoke(app, _score_args(model_dir["lgbm"][0], inp, tmp_path / "out", "--scheduler", cluster))
    assert result.exit_code == 0, result.output
    t = pq.read_table(tmp_path / "out" / "empty.parquet")
    assert t.num_rows == 0 and "probabilities" in t.column_names


def test_the_sample_script_answers_help_and_writes_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "sample_data" / "make_sample.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: make_sample.py") and list(tmp_path.iterdir()) == []


@pytest.mark.heavy
def test_an_unreachable_scheduler_is_one_line(tmp_path: Path, dataset: Path, model_dir: dict) -> None:
    """Heavy: batchserve waits its 15 s connect timeout for an existing scheduler before saying so."""
    out = tmp_path / "out"
    proc = run_cli(*_score_args(model_dir["logreg"][0], dataset, out, "--scheduler", "tcp://127.0.0.1:1"))
    assert proc.returncode == 1, proc.stderr
    assert_one_error_line(proc, "cannot reach the Dask scheduler", "127.0.0.1:1")
    assert not out.exists() or not any(out.rglob("*.parquet"))

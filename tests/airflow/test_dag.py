"""jobs/airflow_dag.py in a real Airflow 3: ``airflow dags test`` on SQLite against the sample data.

Run by ``make test-airflow`` (which installs apache-airflow in its own cached virtual environment
and sets AIRFLOW_BIN); skipped otherwise. Three runs: a clean night (score and publish succeed),
a retry after a lost output file (``--resume`` keeps the rest), and a drifted night (score ends
skipped on exit 3, the data is committed, drift_alert writes the report outside the dataset and
fails so the night shows red, publish does not run; pyarrow and polars still read the dataset).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.test_cli import BIN

AIRFLOW = os.environ.get("AIRFLOW_BIN")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AIRFLOW, reason="needs a real Airflow: run `make test-airflow`"),
]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh AIRFLOW_HOME on SQLite with only our DAG in its DAGs folder."""
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    shutil.copy(REPO / "jobs" / "airflow_dag.py", home / "dags" / "batchserve_nightly.py")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


def workdir(root: Path, drift_day: str | None = None) -> Path:
    """/srv/batchserve's layout: jobs/, sample_data/ (model, reference; transactions copied so one
    day can be drifted), and the batchserve command."""
    (root / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "nightly.toml", root / "jobs" / "nightly.toml")
    data = root / "sample_data"
    data.mkdir()
    (data / "model").symlink_to(REPO / "sample_data" / "model")
    (data / "reference.json").symlink_to(REPO / "sample_data" / "reference.json")
    shutil.copytree(REPO / "sample_data" / "transactions", data / "transactions")
    if drift_day:
        for f in (data / "transactions" / f"date={drift_day}").glob("*.parquet"):
            t = pq.read_table(f)
            t = t.set_column(t.schema.get_field_index("amount"), "amount", pc.multiply(t.column("amount"), 2.0))
            pq.write_table(t, f)
    return root


def _json_out(proc: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    """The JSON list an ``airflow ... -o json`` command prints (its import warnings may come first)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert lines, proc.stdout[-3000:]
    data: list[dict[str, str]] = json.loads(lines[-1])
    return data


def dags_test(env: dict[str, str], day: str, work: Path) -> dict[str, str]:
    """Run the DAG for one logical date; returns task_id -> state of that run."""
    conf = json.dumps({"workdir": str(work), "batchserve": str(BIN)})
    proc = subprocess.run([str(AIRFLOW), "dags", "test", "batchserve_nightly", day, "-c", conf],
                          capture_output=True, text=True, env=env, timeout=600)
    # a failed task may make `dags test` itself exit non-zero; the states below are the verdict
    assert "Traceback (most recent call last)" not in proc.stdout[-200:], proc.stdout[-5000:] + proc.stderr[-5000:]
    runs = subprocess.run([str(AIRFLOW), "dags", "list-runs", "batchserve_nightly", "-o", "json"],
                          capture_output=True, text=True, env=env, timeout=120)
    mine = [r for r in _json_out(runs) if r["logical_date"].startswith(day)]
    latest = max(mine, key=lambda r: r["run_after"])["run_id"]
    states = subprocess.run([str(AIRFLOW), "tasks", "states-for-dag-run", "batchserve_nightly", latest, "-o", "json"],
                            capture_output=True, text=True, env=env, timeout=120)
    return {t["task_id"]: t["state"] for t in _json_out(states)}


def test_a_clean_night_scores_and_publishes_and_a_retry_resumes(airflow: dict[str, str], tmp_path: Path) -> None:
    work = workdir(tmp_path / "srv")
    day = "2026-11-05"
    assert dags_test(airflow, day, work) == {"score": "success", "publish": "success", "drift_alert": "skipped"}
    out = work / "out" / "nightly" / f"date={day}"
    m = json.loads((out / "_manifest.json").read_text())
    assert (out / "_SUCCESS").exists() and m["run"]["status"] == "succeeded" and m["totals"]["rows"] == 20_000
    assert m["drift"]["drifted_features"] == [] and m["run"]["config"]["resume"] is True

    # a retry after an attempt that lost one output: --resume keeps the other, rescoring only this one
    (out / "part-1.parquet").unlink()
    assert dags_test(airflow, day, work)["score"] == "success"
    m = json.loads((out / "_manifest.json").read_text())
    assert {e["relpath"]: e["status"] for e in m["outputs"]} == {"part-0.parquet": "reused",
                                                                 "part-1.parquet": "scored"}
    assert (out / "part-1.parquet").exists() and (out / "_SUCCESS").exists()


def test_a_drifted_night_is_its_own_outcome_and_keeps_the_data(airflow: dict[str, str], tmp_path: Path) -> None:
    day = "2026-11-04"
    work = workdir(tmp_path / "srv", drift_day=day)
    assert dags_test(airflow, day, work) == {"score": "skipped", "publish": "skipped", "drift_alert": "failed"}
    out = work / "out" / "nightly" / f"date={day}"
    m = json.loads((out / "_manifest.json").read_text())
    assert (out / "_SUCCESS").exists() and m["run"]["status"] == "succeeded" and m["totals"]["rows"] == 20_000
    assert m["drift"]["drifted_features"] == ["amount"]
    report = work / "out" / "reports" / f"drift-report-{day}.html"
    assert report.exists() and "amount" in report.read_text()
    # the dataset stays a dataset: nothing but batchserve's own files under output_root
    import polars as pl
    import pyarrow.dataset as ds

    root = work / "out" / "nightly"
    assert [p.name for p in root.iterdir() if not p.name.startswith("date=")] == []
    assert ds.dataset(root, format="parquet", partitioning="hive").count_rows() == 20_000
    assert pl.scan_parquet(root / "**/*.parquet", hive_partitioning=True).select(pl.len()).collect().item() == 20_000

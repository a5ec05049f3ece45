"""Prometheus metrics of a run, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchserve.metrics import LAST_SUCCESS, RunOutcome, build_registry, check_metrics_path, write_metrics_file


def _samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    return {s.name: (dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples}


def test_alias_and_version_labels_and_the_output_label_only_in_the_file() -> None:
    failed = RunOutcome(output="s3://lake/scored/date=2026-11-05", model="models/fraud@production", exit_code=1,
                        run_id="r", seconds=2.5, finished_at=1_800_000_000.0)
    file_view = _samples(generate_latest(build_registry(failed, output_label=True)).decode())
    labels, code = file_view["batchserve_run_exit_code"]
    assert code == 1 and labels == {"output": "s3://lake/scored/date=2026-11-05", "model": "models/fraud",
                                    "model_version": "", "model_alias": "production"}
    assert file_view["batchserve_run_seconds"][1] == 2.5
    assert LAST_SUCCESS not in file_view and "batchserve_run_rows" not in file_view  # nothing scored, nothing claimed
    push_view = _samples(generate_latest(build_registry(failed, output_label=False)).decode())
    assert "output" not in push_view["batchserve_run_exit_code"][0]  # the grouping key carries it
    pinned = RunOutcome(output="o", model="models/fraud@3", exit_code=1, run_id="r", seconds=1.0)
    assert pinned.labels()["model_alias"] == "" and pinned.labels()["model"] == "models/fraud@3"


def test_a_failure_keeps_the_earlier_last_success(tmp_path: Path) -> None:
    path = tmp_path / "batchserve.prom"
    path.write_text('# TYPE batchserve_last_success_timestamp_seconds gauge\n'
                    'batchserve_last_success_timestamp_seconds{model="m",model_alias="",model_version="1",'
                    'output="o"} 1.7e+09\n')
    write_metrics_file(str(path), RunOutcome(output="o", model="m", exit_code=143, run_id="r", seconds=9.0))
    got = _samples(path.read_text())
    assert got[LAST_SUCCESS] == ({"model": "m", "model_alias": "", "model_version": "1", "output": "o"}, 1.7e9)
    assert got["batchserve_run_exit_code"][1] == 143
    assert check_metrics_path(str(tmp_path / "missing" / "x.prom")) and check_metrics_path("s3://b/x.prom")
    assert check_metrics_path(str(tmp_path)) and check_metrics_path(str(path)) is None

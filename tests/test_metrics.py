"""Prometheus metrics of a run, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchserve.manifest import example_manifest
from batchserve.metrics import (
    LAST_SUCCESS,
    RunOutcome,
    build_registry,
    check_metrics_path,
    default_job,
    write_metrics_file,
)


def _samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    return {s.name: (dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples}


def test_one_label_set_on_success_and_failure_and_the_job_label_only_in_the_file() -> None:
    failed = RunOutcome(output="s3://lake/scored/date=2026-11-05", model="models/fraud@production", exit_code=1,
                        run_id="r", seconds=2.5, finished_at=1_800_000_000.0, job="nightly")
    file_view = _samples(generate_latest(build_registry(failed, job_label=True)).decode())
    labels, code = file_view["batchserve_run_exit_code"]
    assert code == 1 and labels == {"batchserve_job": "nightly", "model": "models/fraud", "model_alias": "production"}
    assert file_view["batchserve_run_duration_seconds"][1] == 2.5
    assert LAST_SUCCESS not in file_view and "batchserve_run_rows" not in file_view  # nothing scored, nothing claimed
    push_view = _samples(generate_latest(build_registry(failed, job_label=False)).decode())
    assert "batchserve_job" not in push_view["batchserve_run_exit_code"][0]  # the grouping key carries it
    pinned = RunOutcome(output="o", model="models/fraud@3", exit_code=1, run_id="r", seconds=1.0, job="j")
    assert pinned.labels() == {"model": "models/fraud@3", "model_alias": ""}
    # a run that resolved the model (success) labels it exactly as one that did not (failure)
    done = RunOutcome(output="o", model="models/fraud@production", exit_code=0, run_id="r", seconds=1.0, job="j",
                      manifest=example_manifest())
    assert done.labels() == failed.labels()


def test_the_default_job_name_is_stable_night_after_night() -> None:
    assert default_job("s3://lake/scored/date=2026-11-05", None) == "s3://lake/scored"
    assert default_job("/srv/out/nightly/date=2026-11-05/hour=03/", None) == "/srv/out/nightly"
    assert default_job("/srv/out/anything", "jobs/nightly.toml") == "nightly"


def test_a_failure_keeps_the_earlier_last_success(tmp_path: Path) -> None:
    path = tmp_path / "batchserve.prom"
    # written by an earlier batchserve, with the labels it used then
    path.write_text('# TYPE batchserve_last_success_timestamp_seconds gauge\n'
                    'batchserve_last_success_timestamp_seconds{model="m",model_alias="",model_version="1",'
                    'output="o"} 1.7e+09\n')
    write_metrics_file(str(path), RunOutcome(output="o", model="m", exit_code=143, run_id="r", seconds=9.0, job="j"))
    got = _samples(path.read_text())
    assert got[LAST_SUCCESS] == ({"batchserve_job": "j", "model": "m", "model_alias": ""}, 1.7e9)
    assert got["batchserve_run_exit_code"][1] == 143
    assert check_metrics_path(str(tmp_path / "missing" / "x.prom")) and check_metrics_path("s3://b/x.prom")
    assert check_metrics_path(str(tmp_path)) and check_metrics_path(str(path)) is None


class _Trickle:
    """A local HTTP 'Pushgateway' that answers one byte a second (bounded: it stops after ``limit_s``)."""

    def __init__(self, limit_s: float = 60.0) -> None:
        import socket
        import threading
        import time

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connected = threading.Event()
        self._end = time.monotonic() + limit_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import time

        while not self._stop.is_set() and time.monotonic() < self._end:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connected.set()
            try:
                conn.recv(65536)
                for ch in b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000:
                    if self._stop.is_set() or time.monotonic() > self._end:
                        break
                    conn.send(bytes([ch]))
                    self._stop.wait(1.0)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.sock.close()


def test_a_slow_pushgateway_is_bounded_by_one_overall_deadline() -> None:
    """Issue 20, item 5: one byte every few seconds kept a finished run alive, the timeout being per read."""
    from batchserve.metrics import push_metrics

    gateway = _Trickle()
    try:
        outcome = RunOutcome(output="o", model="m", exit_code=0, run_id="r", seconds=1.0, job="j")
        problem = push_metrics(gateway.url, outcome, deadline_s=2.0)
        assert gateway.connected.is_set()
        assert problem == "no complete answer within 2 s (--push-timeout); the push was abandoned"
    finally:
        gateway.close()


def test_sigterm_while_pushing_says_the_run_had_finished(tmp_path: Path) -> None:
    import signal
    import subprocess

    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
    from tests.test_cli import BIN

    gateway = _Trickle()
    try:
        proc = subprocess.Popen([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA / "date=2026-11-01"),
                                 "-o", str(tmp_path / "out"), "-q", "--pushgateway", gateway.url,
                                 "--push-timeout", "120"], stderr=subprocess.PIPE, text=True)
        assert gateway.connected.wait(120)  # the run finished and is pushing
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and err.count("\n") == 1, err
        assert "while pushing the metrics of a run that had finished (exit 0)" in err and "nothing was scored" not in err
        assert (tmp_path / "out" / "_SUCCESS").exists()
    finally:
        gateway.close()

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

#: Every test here runs the real console script or real processes.
pytestmark = pytest.mark.slow


@pytest.mark.slow
@pytest.mark.heavy
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


# --- the CLI under signals, resume, locks and bad files (real console script, real processes) ---

import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

BIN = Path(sys.executable).parent / "batchserve"


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A model and 16 files heavy enough that a run is still going a second or two in."""
    root = tmp_path_factory.mktemp("slowjob")
    data, _ = models.mlp(len(FEATURES), (768, 768), seed=5)
    model_path = root / "mlp.onnx"
    model_path.write_bytes(models.set_feature_names(data, FEATURES))
    tables = {f"day={i // 4}/part-{i % 4}.parquet": make_table(15_000, seed=300 + i) for i in range(40)}
    write_dataset(root / "in", tables, row_group_size=5000)
    return model_path, root / "in", tables


def start_cli(model: Path, inp: Path, out: Path, scheduler: str | None, *extra: str) -> subprocess.Popen[str]:
    """The CLI on a Dask cluster, or (scheduler None) on the engine it picks itself: for this job, on
    a machine of under 8 CPU cores, the in-process engine."""
    return subprocess.Popen(
        [str(BIN), "score", "--model", str(model), "--input", str(inp), "--output", str(out),
         *(["--scheduler", scheduler] if scheduler else []), "--batch-size", "1000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_commits(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in out.rglob("*.parquet") if "_temporary" not in p.parts]
        if len(done) >= n:
            return
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        time.sleep(0.05)
    raise TimeoutError("no commits")


def wait_for_journal(out: Path, proc: subprocess.Popen[str], timeout: float = 120) -> set[str]:
    """Block until the running manifest (rewritten every 2 s) lists some committed files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"run ended before the journal listed files: {proc.communicate()}"
        try:
            m = json.loads((out / "_manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            m = {}
        if m.get("run", {}).get("status") == "running" and m.get("outputs"):
            return {e["relpath"] for e in m["outputs"]}
        time.sleep(0.02)
    raise TimeoutError("the journal never listed a committed file")


def assert_complete_files_only(out: Path, tables: dict) -> None:
    """Everything under a final name is a whole, readable file with all its rows."""
    for p in out.rglob("*.parquet"):
        if "_temporary" in p.parts:
            continue
        rel = str(p.relative_to(out))
        assert pq.read_table(p).num_rows == tables[rel].num_rows, rel


def interrupt(out: Path, proc: subprocess.Popen[str], sig: int) -> tuple[set[str], str]:
    """Signal a run once its journal lists committed files; what it listed then, and its stderr."""
    listed = wait_for_journal(out, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return listed, stderr


def data_files_once_settled(out: Path) -> set[str]:
    """The data files on disk, 1.5 s after the run ended: a file still in flight on a worker when the
    signal came used to land 0.06-0.5 s later, unlisted."""
    time.sleep(1.5)
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet") if "_temporary" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["scheduler", "own"])
@pytest.mark.heavy
def test_sigterm_writes_interrupted_manifest_and_exits_143(tmp_path: Path, slow_job, cluster: str,
                                                           engine: str) -> None:
    """On a Dask cluster, and on the engine the run picks itself (in-process threads, for this job)."""
    model_path, inp, tables = slow_job
    out = tmp_path / "out"
    proc = start_cli(model_path, inp, out, cluster if engine == "scheduler" else None)
    listed, stderr = interrupt(out, proc, signal.SIGTERM)
    assert proc.returncode == 143, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["run"]["status"] == "interrupted"
    assert listed <= {e["relpath"] for e in m["outputs"]} and len(m["outputs"]) < len(tables)
    assert not (out / "_SUCCESS").exists() and not (out / "_batchserve.lock").exists()
    assert_complete_files_only(out, tables)
    assert data_files_once_settled(out) == {e["relpath"] for e in m["outputs"]}  # exactly what is on disk
    import hashlib

    for e in m["outputs"]:
        assert e["checksum"] == "sha256:" + hashlib.sha256((out / e["relpath"]).read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.heavy
def test_sigint_exits_130_with_one_line(tmp_path: Path, slow_job, cluster: str) -> None:
    model_path, inp, _ = slow_job
    out = tmp_path / "out"
    proc = start_cli(model_path, inp, out, cluster)
    _, stderr = interrupt(out, proc, signal.SIGINT)
    assert proc.returncode == 130, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "interrupted by SIGINT" in errors[0] and "Traceback" not in stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["run"]["status"] == "interrupted" and not (out / "_SUCCESS").exists()
    assert data_files_once_settled(out) == {e["relpath"] for e in m["outputs"]}


@pytest.mark.slow
@pytest.mark.heavy
def test_sigkill_then_resume_rescores_only_uncommitted_files(tmp_path: Path, slow_job, cluster: str) -> None:
    model_path, inp, tables = slow_job
    out = tmp_path / "out"
    proc = start_cli(model_path, inp, out, cluster)
    wait_for_journal(out, proc)
    proc.kill()
    proc.wait()
    journal = json.loads((out / "_manifest.json").read_text())
    assert journal["run"]["status"] == "running"
    listed = {e["relpath"] for e in journal["outputs"]}
    assert listed and len(listed) < len(tables), "kill came too late or too early to test resume"
    # every file committed when the kill landed, listed by the journal or not (issue 20, item 13)
    committed = {str(p.relative_to(out)) for p in out.rglob("*.parquet") if "_temporary" not in p.parts}
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in committed}
    resumed = subprocess.run(
        [str(BIN), "score", "--model", str(model_path), "--input", str(inp), "--output", str(out),
         "--scheduler", cluster, "--resume"], capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    m = json.loads((out / "_manifest.json").read_text())
    status = {e["relpath"]: e["status"] for e in m["outputs"]}
    reused = {r for r, s in status.items() if s == "reused"}
    # tasks already running on the shared cluster's workers may still commit after the client died: those
    # files are whole and stamped too, so they may be kept as well
    assert committed <= reused and listed <= committed
    assert {r for r, s in status.items() if s == "scored"} == set(tables) - reused
    assert all(e["note"] for e in m["outputs"])
    by_footer = {e["relpath"] for e in m["outputs"] if e["note"].endswith("(found by its footer stamp)")}
    assert by_footer == reused - listed and committed - listed <= by_footer
    for rel in committed:  # reused files were not rewritten
        assert (out / rel).stat().st_mtime_ns == stamps[rel]
    assert (out / "_SUCCESS").exists() and not list(out.rglob("_temporary/**/*.parquet"))
    clean = tmp_path / "clean"
    assert subprocess.run([str(BIN), "score", "--model", str(model_path), "--input", str(inp), "--output",
                           str(clean), "--scheduler", cluster], capture_output=True, timeout=300).returncode == 0
    for rel in tables:  # same content as a clean run, row for row
        assert pq.read_table(out / rel).equals(pq.read_table(clean / rel)), rel
    entry = next(e for e in m["outputs"] if e["relpath"] == next(iter(tables)))
    import hashlib

    assert entry["checksum"] == "sha256:" + hashlib.sha256((out / entry["relpath"]).read_bytes()).hexdigest()


def test_resume_rescores_changed_inputs_and_models(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    tables = {"a.parquet": make_table(300, seed=1), "b.parquet": make_table(200, seed=2)}
    write_dataset(tmp_path / "in", tables)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--scheduler", cluster]
    r = subprocess.run([str(BIN), "score", "--model", str(model_dir["logreg"][0]), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    time.sleep(0.05)
    pq.write_table(make_table(250, seed=9), tmp_path / "in" / "b.parquet")  # b changed
    r = subprocess.run([str(BIN), "score", "--model", str(model_dir["logreg"][0]), *args, "--resume"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "_manifest.json").read_text())
    by = {e["relpath"]: e for e in m["outputs"]}
    assert by["a.parquet"]["status"] == "reused"
    assert by["b.parquet"]["status"] == "scored" and "input changed" in by["b.parquet"]["note"]
    assert pq.read_table(out / "b.parquet").num_rows == 250
    r = subprocess.run([str(BIN), "score", "--model", str(model_dir["lgbm"][0]), *args, "--resume"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert {e["status"] for e in m["outputs"]} == {"scored"}
    assert all(e["note"].startswith("model changed") for e in m["outputs"])


def test_live_lock_refuses_a_second_run_and_stale_lock_is_taken_over(tmp_path: Path, cluster: str,
                                                                      model_dir: dict) -> None:
    write_dataset(tmp_path / "in", {"a.parquet": make_table(100)})
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "_batchserve.lock"
    live = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "started_at": "2026-11-21T00:00:00.000000Z"}
    lock.write_text(json.dumps(live))
    args = [str(BIN), "score", "--model", str(model_dir["logreg"][0]), "--input", str(tmp_path / "in"),
            "--output", str(out), "--scheduler", cluster]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "another batchserve run is writing this output" in errors[0]
    assert f"pid {os.getpid()}" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["_batchserve.lock"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({**live, "pid": dead.pid}))
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "stale lock" in r.stderr and not lock.exists() and (out / "_SUCCESS").exists()


def test_on_error_skip_records_bad_files_and_max_failed_files(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    tables = {"a.parquet": make_table(100), "c.parquet": make_table(80, seed=3)}
    write_dataset(tmp_path / "in", tables)
    (tmp_path / "in" / "b.parquet").write_bytes(b"PAR1 truncated")
    base = [str(BIN), "score", "--model", str(model_dir["logreg"][0]), "--input", str(tmp_path / "in"),
            "--scheduler", cluster]
    r = subprocess.run([*base, "--output", str(tmp_path / "fail")], capture_output=True, text=True)
    assert r.returncode == 1 and "b.parquet" in r.stderr and "not a readable Parquet file" in r.stderr
    assert not list((tmp_path / "fail").rglob("*.parquet"))
    r = subprocess.run([*base, "--output", str(tmp_path / "skip"), "--on-error", "skip"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "skip" / "_manifest.json").read_text())
    assert [f["relpath"] for f in m["failures"]] == ["b.parquet"]
    assert "not a readable Parquet file" in m["failures"][0]["error"]
    assert sorted(e["relpath"] for e in m["outputs"]) == ["a.parquet", "c.parquet"]
    r = subprocess.run([*base, "--output", str(tmp_path / "strict"), "--on-error", "skip", "--max-failed-files", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "more than --max-failed-files 0" in errors[0]
    assert json.loads((tmp_path / "strict" / "_manifest.json").read_text())["run"]["status"] == "failed"
    assert not (tmp_path / "strict" / "_SUCCESS").exists()


# --- object-store and storage faults -----------------------------------------------------------

import http.client  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

from tests.conftest import free_port  # noqa: E402


class FaultyS3Proxy:
    """A loopback HTTP proxy in front of moto that answers every ``every``-th request with 503 SlowDown."""

    def __init__(self, upstream: str, every: int = 3) -> None:
        up = urlparse(upstream)
        self.count = 0
        self.injected = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                with lock:
                    proxy.count += 1
                    fail = proxy.count % every == 0
                    proxy.injected += fail
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if fail:
                    payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but must keep the object's real length.
                out_len = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", out_len or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(120)
@pytest.mark.heavy
def test_object_store_5xx_faults_are_ridden_out(tmp_path: Path, s3: dict, cluster: str, model_dir: dict) -> None:
    """Every third request to the S3 endpoint fails with 503 SlowDown; the run still completes, correctly."""
    import s3fs

    fs = s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], endpoint_url=s3["endpoint_url"])
    tables = {f"d={i}/p.parquet": make_table(400, seed=40 + i) for i in range(4)}
    for rel, table in tables.items():
        with fs.open(f"lake/faulty-in/{rel}", "wb") as fh:
            pq.write_table(table, fh, row_group_size=100)
    path, clf = model_dir["logreg"]
    with FaultyS3Proxy(s3["endpoint_url"], every=3) as proxy:
        opts = {**s3, "endpoint_url": proxy.url}
        result = batchserve.score(model=str(path), input="s3://lake/faulty-in/", output="s3://lake/faulty-out/",
                                  scheduler=cluster, storage_options=opts, batch_size=64)
    assert proxy.injected >= 10, "no faults were injected"
    assert result.manifest.totals.rows == 1600
    fs.invalidate_cache()
    assert fs.exists("lake/faulty-out/_SUCCESS")
    for rel, table in tables.items():
        with fs.open(f"lake/faulty-out/{rel}", "rb") as fh:
            got = pq.read_table(fh)
        np.testing.assert_allclose(np.array(got.column("probabilities").to_pylist()),
                                   clf.predict_proba(features_matrix(table)), rtol=1e-4, atol=1e-5)


def test_task_level_retry_recovers_from_transient_read_errors(inproc_cluster: str, model_dir: dict) -> None:
    """A filesystem whose first read of each data file fails: our own retry (not botocore's) must recover."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    failed: set[str] = set()

    class FlakyFS(MemoryFileSystem):
        protocol = "flaky"

        @classmethod
        def _strip_protocol(cls, path):  # type: ignore[no-untyped-def]
            if isinstance(path, str) and path.startswith("flaky://"):
                path = "memory://" + path[len("flaky://"):]
            return super()._strip_protocol(path)

        def _open(self, path, mode="rb", **kw):  # type: ignore[no-untyped-def]
            if "r" in mode and path.endswith(".parquet") and "/in/" in path and path not in failed:
                failed.add(path)
                raise ConnectionResetError(f"injected reset reading {path}")
            return super()._open(path, mode, **kw)

    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    mem = fsspec.filesystem("memory")
    tables = {f"p{i}.parquet": make_table(300, seed=70 + i) for i in range(3)}
    for rel, table in tables.items():
        with mem.open(f"/flaky-job/in/{rel}", "wb") as fh:
            pq.write_table(table, fh)
    path, oracle = model_dir["multi"]
    result = batchserve.score(model=str(path), input="flaky://flaky-job/in", output="flaky://flaky-job/out",
                              scheduler=inproc_cluster, features=FEATURES, retries=2)
    assert len(failed) >= 3, "faults were not injected"
    assert result.manifest.totals.rows == 900
    for rel, table in tables.items():
        with mem.open(f"/flaky-job/out/{rel}", "rb") as fh:
            got = pq.read_table(fh)
        want = oracle(features_matrix(table))
        models.assert_within(got.column("score").to_numpy(), want["score"], want["score_bound"], rel)
    with pytest.raises(batchserve.StorageError, match="injected reset"):
        failed.clear()
        batchserve.score(model=str(path), input="flaky://flaky-job/in", output="flaky://flaky-job/out2",
                         scheduler=inproc_cluster, features=FEATURES, retries=0)


def test_an_input_rewritten_after_planning_is_never_committed_as_planned(tmp_path: Path) -> None:
    """Issue 20, item 10: an input rewritten in place mid-run was scored (its retry re-read it) and
    committed while the manifest recorded the old size and version. The task compares the file with
    what planning recorded before its commit: a changed file fails, one line naming it, nothing of it
    committed."""
    import pyarrow.parquet as pq

    import batchserve
    from batchserve.errors import DataError
    from tests.conftest import make_table, write_dataset

    src = write_dataset(tmp_path / "in", {"a.parquet": make_table(300, seed=1), "b.parquet": make_table(200, seed=2)})
    model = tmp_path / "m.onnx"
    from tests import models

    data, _ = models.logreg(*_xy(), zipmap=False, names=[f"f{i}" for i in range(6)])
    model.write_bytes(data)

    def rewrite(event) -> None:
        if event.phase == "planned":  # after planning, before any task: the file changes under the run
            pq.write_table(make_table(310, seed=3), src / "b.parquet")

    with pytest.raises(DataError, match="input file changed while the run was scoring it") as info:
        batchserve.score(model=str(model), input=str(src), output=str(tmp_path / "out"), on_progress=rewrite)
    assert "b.parquet" in str(info.value)
    assert not (tmp_path / "out" / "b.parquet").exists() and not (tmp_path / "out" / "_SUCCESS").exists()
    # the next run plans the new content and scores it
    done = batchserve.score(model=str(model), input=str(src), output=str(tmp_path / "out"), resume=True)
    assert {e.relpath: e.rows for e in done.manifest.outputs} == {"a.parquet": 300, "b.parquet": 310}


def _xy():
    from tests.conftest import features_matrix, make_table

    t = make_table(500, seed=9)
    return features_matrix(t), t.column("target").to_numpy()


@pytest.mark.slow
@pytest.mark.heavy
def test_sigterm_with_a_challenger_advises_what_works(tmp_path: Path, slow_job, cluster: str) -> None:
    """Issue 20, item 4: SIGTERM with a challenger said 're-run with --resume', which is then refused
    ('not supported with --challenger yet'). The line advises --overwrite, and following it succeeds."""
    model_path, inp, _ = slow_job
    out, ch = tmp_path / "out", tmp_path / "ch"
    extra = ("--challenger", str(model_path), "--challenger-output", str(ch), "--challenger-keep", "id")
    proc = start_cli(model_path, inp, out, cluster, *extra)
    _, stderr = interrupt(out, proc, signal.SIGTERM)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 143 and len(errors) == 1, stderr
    assert "re-run with --overwrite (--resume is not supported with --challenger yet)" in errors[0]
    assert "--resume to finish" not in errors[0]
    again = start_cli(model_path, inp, out, cluster, *extra, "--overwrite", "-q")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert (out / "_SUCCESS").exists() and (ch / "_SUCCESS").exists()


@pytest.mark.slow
@pytest.mark.heavy
def test_an_input_rewritten_in_place_while_scored_always_ends_as_one_line(tmp_path: Path) -> None:
    """Issue 26, item 6: in 2 of 23 trials ``score`` died with SIGABRT or SIGSEGV and no error line when an
    input was rewritten in place while being read. Real runs (in-process, as ``--workers 1`` scores), each
    with a thread rewriting the input in place over and over from before the run starts: every run exits 1
    with one line naming the file, nothing committed; never a signal, never a traceback."""
    import threading

    import pyarrow.parquet as pq

    from tests import models
    from tests.conftest import make_table

    model = tmp_path / "m.onnx"
    data, _ = models.logreg(*_xy(), zipmap=False, names=[f"f{i}" for i in range(6)])
    model.write_bytes(data)
    versions = [make_table(60_000, seed=s) for s in range(3)]
    for trial in range(12):
        src = tmp_path / f"in{trial}"
        src.mkdir()
        target = src / "a.parquet"
        pq.write_table(versions[0], target, row_group_size=2_000)
        stop = threading.Event()

        def rewrite(target: Path = target, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                pq.write_table(versions[i % 3], target, row_group_size=2_000 + 500 * (i % 3))

        writer = threading.Thread(target=rewrite, daemon=True)
        writer.start()  # rewriting from before the run starts until after it ends: every run sees it
        proc = subprocess.Popen([str(BIN), "score", "-m", str(model), "-i", str(src), "-o", str(tmp_path / f"o{trial}"),
                                 "--workers", "1", "--batch-size", "4096", "-q"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            stop.set()
            writer.join(30)
        # the input changed under the whole run: one line naming it, exit 1, nothing committed; never a
        # signal (a negative code) or a traceback
        assert proc.returncode == 1, (trial, proc.returncode, err)
        assert "Traceback" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "a.parquet" in errors[0], err
        assert not (tmp_path / f"o{trial}" / "_SUCCESS").exists()


@pytest.mark.slow
@pytest.mark.heavy
def test_overwrite_of_an_output_holding_a_live_run_is_refused_and_both_runs_stay_whole(
        tmp_path: Path, slow_job) -> None:
    """Issue 26, item 1, with real processes: ``score -o X/sub`` still going while ``score -o X --overwrite``
    starts. Both exited 0, and X/sub's _SUCCESS stood over files the outer run had removed. The outer run
    is refused (its one line names the live run below it) and the inner one finishes whole."""
    model_path, inp, tables = slow_job
    outer = tmp_path / "out"
    inner_out = outer / "sub"
    inner = start_cli(model_path, inp, inner_out, None)
    try:
        wait_for_commits(inner_out, 1, inner)
        done = subprocess.run([str(BIN), "score", "--model", str(model_path), "--input", str(inp), "--output",
                               str(outer), "--overwrite", "--batch-size", "1000"], capture_output=True, text=True,
                              timeout=300)
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
        assert done.returncode == 1 and len(errors) == 1, done.stderr
        assert "is writing sub/ inside this output" in errors[0], errors[0]
        _, err = inner.communicate(timeout=300)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.communicate()
    assert inner.returncode == 0, err
    m = json.loads((inner_out / "_manifest.json").read_text())
    assert (inner_out / "_SUCCESS").exists() and len(m["outputs"]) == len(tables)
    assert all((inner_out / e["relpath"]).exists() for e in m["outputs"])
    assert not (outer / "_SUCCESS").exists()

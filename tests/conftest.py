"""Shared fixtures: data, real models, one Dask cluster per session, moto on loopback.

Everything that starts a process is session-scoped where it can be and is torn
down at the end; nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

from tests import models

# No hypothesis test may depend on timing: a busy CI machine made one fail with DeadlineExceeded.
settings.register_profile("batchserve", deadline=None)
settings.load_profile("batchserve")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MODEL = REPO / "sample_data" / "model"
SAMPLE_DATA = REPO / "sample_data" / "transactions"
FEATURES = [f"f{i}" for i in range(6)]


#: Fixtures that start processes (a Dask cluster, a moto server, dask workers): tests using them are slow.
PROCESS_FIXTURES = {"cluster", "inproc_cluster", "dask_processes", "s3", "slow_job", "reference", "drifted"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts processes ``slow`` (``make test-fast`` leaves them out)."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_table(n: int, seed: int = 0, *, null_every: int = 0) -> pa.Table:
    """Features f0..f5 of mixed numeric types plus an id string and a label."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {"id": pa.array([f"row-{seed}-{i}" for i in range(n)])}
    f0 = rng.normal(size=n)
    mask = (np.arange(n) % null_every == 0) if null_every else None
    cols["f0"] = pa.array(f0, mask=mask)
    cols["f1"] = pa.array(rng.normal(2, 3, size=n).astype(np.float32))
    cols["f2"] = pa.array(rng.integers(-50, 50, size=n).astype(np.int32))
    cols["f3"] = pa.array(rng.integers(0, 1000, size=n).astype(np.int64))
    cols["f4"] = pa.array(rng.random(n) < 0.3)
    cols["f5"] = pa.array(rng.exponential(size=n))
    cols["target"] = pa.array((f0 + rng.normal(size=n) > 0.5).astype(np.int64))
    return pa.table(cols)


def features_matrix(table: pa.Table, names: list[str] = FEATURES) -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, n in enumerate(names):
        col = table.column(n)
        if pa.types.is_boolean(col.type):
            col = col.cast(pa.int8())
        out[:, j] = col.to_numpy(zero_copy_only=False)
    return out


def write_dataset(root: Path, tables: dict[str, pa.Table], row_group_size: int = 1000) -> Path:
    for rel, table in tables.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group_size)
    return root


@pytest.fixture(scope="session")
def train_table() -> pa.Table:
    return make_table(3000, seed=99)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, train_table: pa.Table) -> dict[str, object]:
    """Every model kind the issue names, written once, with its oracle."""
    d = tmp_path_factory.mktemp("models")
    x = features_matrix(train_table)
    y = train_table.column("target").to_numpy()
    out: dict[str, object] = {}
    data, clf = models.logreg(x, y, zipmap=False, names=FEATURES)
    (d / "logreg.onnx").write_bytes(data)
    out["logreg"] = (d / "logreg.onnx", clf)
    data, clf = models.logreg(x, y, zipmap=True, names=FEATURES)
    (d / "zipmap.onnx").write_bytes(data)
    out["zipmap"] = (d / "zipmap.onnx", clf)
    data, clf = models.lightgbm(x, y, names=FEATURES)
    (d / "lgbm.onnx").write_bytes(data)
    out["lgbm"] = (d / "lgbm.onnx", clf)
    data, oracle = models.multi_output(len(FEATURES))
    (d / "multi.onnx").write_bytes(data)
    out["multi"] = (d / "multi.onnx", oracle)
    data, oracle = models.per_column(FEATURES)
    (d / "percol.onnx").write_bytes(data)
    out["percol"] = (d / "percol.onnx", oracle)
    (d / "int_input.onnx").write_bytes(models.int_input(2))
    out["int_input"] = (d / "int_input.onnx", None)
    (d / "string_input.onnx").write_bytes(models.string_input())
    out["string_input"] = (d / "string_input.onnx", None)
    (d / "not_onnx.onnx").write_bytes(b"this is not a protobuf at all \x00\x01")
    out["not_onnx"] = (d / "not_onnx.onnx", None)
    return out


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """One real multi-process LocalCluster shared by the suite: 2 workers, 1 thread each."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=40,
    ) as lc:
        yield str(lc.scheduler_address)


@pytest.fixture(scope="session")
def inproc_cluster() -> Iterator[str]:
    """Threads in this process: the only way workers share the ``memory://`` filesystem."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=40
    ) as lc:
        yield str(lc.scheduler_address)


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto in server mode on 127.0.0.1: a real S3 wire protocol, torn down after the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
    }
    env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=opts["endpoint_url"], region_name="us-east-1").create_bucket(Bucket="lake")
    try:
        yield opts
    finally:
        server.stop()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def dask_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1 (the existing-cluster path)."""
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    dask_bin = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    procs = [
        subprocess.Popen(
            [dask_bin, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
        )
    ]
    try:
        _wait_for(sched_file)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [dask_bin, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                     "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "2GiB"],
                    # Their own working directory, as on a real cluster: relative paths must not
                    # resolve there (issue 7: outputs once landed in the workers' directory).
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
                )
            )
        import json

        from distributed import Client

        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's ``prometheus-pushgateway`` on 127.0.0.1 (``make test`` installs it as root), stopped by PID."""
    import urllib.request

    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed and could not be (make test installs Debian's "
                    "package when run as root)")
    port = free_port()
    d = tmp_path_factory.mktemp("pushgateway")
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus-pushgateway did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def screenshot(page: Path, shot: Path, size: str = "1400,1800") -> Path:
    """Render a self-contained HTML page in Debian's headless Chromium; the PNG is what a person sees.
    ``TEST_SCREENSHOTS_DIR`` keeps a copy for looking at."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("headless Chromium is needed to render the report (make test installs Debian's chromium)")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={shot.parent / 'chrome'}",
                    f"--screenshot={shot}", f"--window-size={size}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, f"Chromium did not render {page.name}"
    keep = os.environ.get("TEST_SCREENSHOTS_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
    return shot

"""Hybrid serving end to end, on real parts: a server with request logs, live drift and a challenger,
called through ``tritonclient.http``; the logs re-scored by ``batchserve score``; nightly scores served."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchserve import registry
from tests import models
from tests.serving import REPO, Server

FEATURES = [f"f{i}" for i in range(6)]
#: Under 1,000 rows in all: the KLL sketches (k = 1,000) hold every value, so the live window and the
#: batch run over the logged rows must agree to the last bit of every quantile-based metric.
CLEAN, DRIFTED = 200, 600


def frame(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 0] += shift
    x[:, 1] *= 1 + shift
    return x


def run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "batchserve", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("hybrid")
    x = frame(2000, seed=1)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    root = str(d / "fraud")
    v1, _ = models.logreg(x, y, zipmap=False, names=FEATURES)
    v2, _ = models.logreg(x, (x[:, 0] - x[:, 2] > 0).astype(np.int64), zipmap=False, names=FEATURES)
    registry.register(root, v1, {}, actor="test", message=None)
    registry.register(root, v2, {}, actor="test", message=None)
    registry.promote(root, 1, "champion", {}, actor="test", message=None)
    registry.promote(root, 2, "candidate", {}, actor="test", message=None)
    train = d / "train"
    train.mkdir()
    pq.write_table(pa.table({f: x[:, j] for j, f in enumerate(FEATURES)}), train / "part.parquet")
    run("profile", "--model", f"{root}@champion", "--input", str(train), "--output", str(d / "ref.json"),
        "--workers", "1")
    return {"root": root, "dir": d, "ref": str(d / "ref.json")}


@pytest.fixture(scope="module")
def live(setup: dict) -> Iterator[dict]:
    logs = setup["dir"] / "logs"
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--challenger",
                     f"{setup['root']}@candidate", "--reference", setup["ref"], "--log-requests", str(logs),
                     "--log-flush-seconds", "0.3", "--shadow-budget", "1", "--no-access-log"])
    try:
        yield {"server": server, "logs": logs}
    finally:
        server.stop()


def _send(server: Server, x: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Requests of 1 to 20 rows through tritonclient (binary), each with its own X-Request-Id."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    answers: dict[str, np.ndarray] = {}
    start = 0
    k = 0
    while start < len(x):
        n = min(1 + (k * 7) % 20, len(x) - start)
        rows = x[start:start + n].astype(np.float32)
        inp = httpclient.InferInput("X", [n, len(FEATURES)], "FP32")
        inp.set_data_from_numpy(rows)
        rid = f"{prefix}-{k}"
        result = client.infer("fraud", [inp], headers={"X-Request-Id": rid})
        answers[rid] = result.as_numpy("probabilities")
        start += n
        k += 1
    return answers


def _drift(server: Server) -> dict:
    return json.loads(urllib.request.urlopen(server.url + "/v2/models/fraud/drift", timeout=60).read())


def _logged(logs: Path, rows: int) -> pa.Table:
    deadline = time.monotonic() + 60
    while True:
        table = ds.dataset(logs, format="parquet", partitioning="hive").to_table() if logs.exists() else None
        if (table is not None and table.num_rows >= rows) or time.monotonic() > deadline:
            assert table is not None
            return table
        time.sleep(0.1)


@pytest.mark.heavy  # a server with a challenger and a reference, then batch runs over its logs
def test_live_drift_logs_and_shadow_agree_with_batch(live: dict, setup: dict, tmp_path: Path) -> None:
    server, logs = live["server"], live["logs"]
    clean = frame(CLEAN, seed=2)
    sent = _send(server, clean, "clean")
    # Wait until the after-answer thread has seen every row (the window counts them).
    while _drift(server)["drift"]["rows"] < CLEAN:
        time.sleep(0.05)
    assert _drift(server)["drift"]["drift"]["drifted_features"] == []
    drifted = frame(DRIFTED, seed=3, shift=3.0)
    sent |= _send(server, drifted, "drifted")
    while _drift(server)["drift"]["rows"] < CLEAN + DRIFTED:
        time.sleep(0.05)
    doc = _drift(server)
    live_section = doc["drift"]["drift"]
    assert live_section["drifted_features"] == ["f0", "f1"]
    assert live_section["drifted_predictions"]  # the shifted features move the scores too

    # The logged rows: what was sent, and what was answered, under each request id.
    table = _logged(logs, CLEAN + DRIFTED)
    assert table.num_rows == CLEAN + DRIFTED
    assert not list(logs.rglob("_temporary/*.parquet"))
    ids = table.column("request_id").to_pylist()
    probs = np.asarray(table.column("probabilities").to_pylist(), dtype=np.float32)
    for rid, answer in sent.items():
        rows = [i for i, r in enumerate(ids) if r == rid]
        np.testing.assert_array_equal(probs[rows], answer)
    everything = np.vstack([clean, drifted]).astype(np.float32)
    logged_x = np.column_stack([table.column(f).to_numpy() for f in FEATURES])
    order = np.lexsort(logged_x.T[::-1])
    want = np.lexsort(everything.T[::-1])
    np.testing.assert_array_equal(logged_x[order], everything[want])
    assert set(table.column("model_version").to_pylist()) == {"1"}
    assert set(table.column("challenger_version").to_pylist()) == {"2"}

    # The same rows through `batchserve score --reference`: the same figures, column by column.
    out = tmp_path / "rescored"
    run("score", "-m", f"{setup['root']}@champion", "-i", str(logs), "-o", str(out), "--keep", "request_id",
        "--reference", setup["ref"], "--workers", "1", "-q")
    batch = json.loads((out / "_manifest.json").read_text())["drift"]
    assert batch["drifted_features"] == live_section["drifted_features"]
    assert batch["drifted_predictions"] == live_section["drifted_predictions"]
    for role in ("features", "predictions"):
        assert batch[role].keys() == live_section[role].keys()
        for name, col in batch[role].items():
            for metric in ("count", "psi", "js", "ks", "wasserstein", "mean", "std"):
                a, b = col[metric], live_section[role][name][metric]
                # Quantile metrics come from sketches holding every value: equal. Moments of float32
                # values are summed after a float32 shift that depends on how rows were chunked (files
                # per flush vs the window's pieces): equal to float32 rounding.
                tol = 1e-6 if metric in ("mean", "std") else 1e-9
                assert (a is None and b is None) or abs(a - b) <= tol * max(1.0, abs(a)), (role, name, metric, a, b)

    # The challenger re-scored from the logs equals what the live shadow answered.
    shadow = tmp_path / "shadow"
    run("score", "-m", f"{setup['root']}@candidate", "-i", str(logs), "-o", str(shadow), "--keep", "request_id",
        "--workers", "1", "-q")
    rescored = ds.dataset(shadow, format="parquet", partitioning="hive").to_table()
    by_id: dict[str, list[list[float]]] = {}
    for rid, p in zip(rescored.column("request_id").to_pylist(), rescored.column("probabilities").to_pylist(),
                      strict=True):
        by_id.setdefault(rid, []).append(p)
    live_by_id: dict[str, list[list[float]]] = {}
    for rid, p in zip(ids, table.column("challenger_probabilities").to_pylist(), strict=True):
        live_by_id.setdefault(rid, []).append(p)
    assert by_id.keys() == live_by_id.keys()
    for rid in by_id:
        # Float32 probabilities of rows scored in batches of other sizes: equal to a few ulps.
        np.testing.assert_allclose(np.asarray(sorted(by_id[rid])), np.asarray(sorted(live_by_id[rid])), atol=1e-6)
    agreement = doc["challenger"]["columns"]["label"]
    assert agreement["rows"] == CLEAN + DRIFTED and 0 < agreement["agreement"] < 1


def _metric(server: Server, name: str) -> float:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=60).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _post(server: Server, x: np.ndarray, extra: list[dict] | None = None) -> tuple[int, dict]:
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
                      *(extra or [])]}
    return server.json("POST", "/v2/models/fraud/infer", doc)


def test_a_blocked_log_store_never_fails_a_request(setup: dict, tmp_path: Path) -> None:
    """The log folder's place is taken by a file (root ignores permissions): every write fails. Requests
    succeed, failures and drops are counted, nothing lands half-written; SIGTERM still exits 0."""
    blocked = tmp_path / "logs"
    blocked.write_text("not a folder")
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--log-requests", str(blocked),
                     "--log-flush-rows", "5", "--log-buffer-rows", "20", "--log-flush-seconds", "0.1",
                     "--drain-seconds", "2", "--no-access-log"])
    try:
        for i in range(30):
            assert _post(server, frame(3, seed=i))[0] == 200
        server.wait_for('"event": "log_failed"')
        deadline = time.monotonic() + 60
        while _metric(server, "batchserve_serve_log_dropped_rows_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(server, "batchserve_serve_log_dropped_rows_total") > 0
        assert _metric(server, "batchserve_serve_log_write_failures_total") > 0
    finally:
        assert server.stop() == 0
    assert blocked.read_text() == "not a folder"
    assert not list(tmp_path.rglob("*.parquet"))


def test_sigterm_flushes_what_is_buffered(setup: dict, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--log-requests", str(logs),
                     "--log-flush-seconds", "3600", "--no-access-log"])
    for i in range(10):
        assert _post(server, frame(4, seed=i))[0] == 200
    assert not logs.exists() or not list(logs.rglob("*.parquet"))  # nothing flushed yet
    assert server.stop() == 0
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 40
    assert pq.read_metadata(next(logs.rglob("*.parquet"))).metadata[b"batchserve.log_sample"] == b"1.0"


@pytest.mark.heavy  # 15 s and more: botocore retries against the stopped server
def test_a_store_that_goes_away_mid_run(setup: dict) -> None:
    """moto's S3 server stopped mid-run: requests keep succeeding, the failure counter moves."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="logs")
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--log-requests", "s3://logs/live",
                     "--storage-option", f"endpoint_url={endpoint}", "--log-flush-rows", "5",
                     "--log-flush-seconds", "0.1", "--log-buffer-rows", "40", "--drain-seconds", "2",
                     "--no-access-log"], env=env)
    stopped = False
    try:
        for i in range(4):
            assert _post(server, frame(3, seed=i))[0] == 200
        deadline = time.monotonic() + 60
        while _metric(server, "batchserve_serve_log_files_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(server, "batchserve_serve_log_files_total") >= 1
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        visible = [o["Key"] for o in s3.list_objects_v2(Bucket="logs")["Contents"] if "/_temporary/" not in o["Key"]]
        assert visible and all(k.startswith("live/log_date=") for k in visible)
        for k in visible:  # every visible file is whole (a staged one, under _temporary/, readers skip)
            body = s3.get_object(Bucket="logs", Key=k)["Body"].read()
            assert pq.read_table(pa.BufferReader(body)).num_rows > 0
        moto.stop()
        stopped = True
        for i in range(30):
            assert _post(server, frame(3, seed=100 + i))[0] == 200
        deadline = time.monotonic() + 120
        while _metric(server, "batchserve_serve_log_write_failures_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(server, "batchserve_serve_log_write_failures_total") > 0
    finally:
        code = server.stop()
        if not stopped:
            moto.stop()
    assert code == 0


@pytest.fixture(scope="module")
def nightly(setup: dict) -> dict:
    d = setup["dir"] / "nightly"
    x = frame(300, seed=7)
    ids = [f"cust-{i:05d}" for i in range(300)]
    (d / "in").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, **{f: x[:, j] for j, f in enumerate(FEATURES)}}), d / "in" / "part.parquet")
    run("score", "-m", f"{setup['root']}@champion", "-i", str(d / "in"), "-o", str(d / "out"), "--workers", "1", "-q")
    return {"dir": d, "x": x, "ids": ids}


def _scored(out: Path) -> dict[str, list[float]]:
    table = ds.dataset(out, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    return dict(zip(table.column("id").to_pylist(), table.column("probabilities").to_pylist(), strict=True))


@pytest.mark.heavy  # a server and a new batch run picked up
def test_nightly_scores_are_served_by_key_and_a_new_run_is_picked_up(setup: dict, nightly: dict) -> None:
    import tritonclient.http as httpclient

    out = nightly["dir"] / "out"
    batch = _scored(out)
    run_id = json.loads((out / "_manifest.json").read_text())["run"]["id"]
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--precomputed", str(out),
                     "--key", "id", "--poll-seconds", "0.2", "--no-access-log"])
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        rows = [5, 17, 250]
        key = httpclient.InferInput("id", [3], "BYTES")
        key.set_data_from_numpy(np.array([nightly["ids"][i] for i in rows], dtype=object))
        result = client.infer("fraud", [key])
        response = result.get_response()
        assert response["parameters"] == {"source": "batch", "run_id": run_id, "model_version": "1"}
        np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                      np.asarray([batch[nightly["ids"][i]] for i in rows], dtype=np.float32))
        # A key the run did not score: scored online from the features sent beside it.
        x = nightly["x"][:2].astype(np.float32)
        status, answer = _post(server, x, [{"name": "id", "datatype": "BYTES", "shape": [2],
                                            "data": ["cust-00000", "nobody"]}])
        assert status == 200 and answer["parameters"] == {"source": "online"}
        probs = np.asarray(answer["outputs"][1]["data"]).reshape(2, 2)
        np.testing.assert_allclose(probs[0], batch["cust-00000"], atol=1e-6)
        # A newer run commits (another model version): loaded, swapped, and the version gap said.
        mark = len(server.lines)
        run("score", "-m", f"{setup['root']}@candidate", "-i", str(nightly["dir"] / "in"), "-o", str(out),
            "--overwrite", "--workers", "1", "-q")
        server.wait_for('"event": "precomputed_version_mismatch"', since=mark, timeout=120)
        result = client.infer("fraud", [key])
        new = result.get_response()["parameters"]
        assert new["model_version"] == "2" and new["run_id"] != run_id
        np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                      np.asarray([_scored(out)[nightly["ids"][i]] for i in rows], dtype=np.float32))
        assert _metric(server, "batchserve_serve_precomputed_version_mismatch") == 1
    finally:
        assert server.stop() == 0


@pytest.mark.heavy  # servers over a batch run's output
def test_precomputed_only_and_duplicate_keys(setup: dict, nightly: dict, tmp_path: Path) -> None:
    out = nightly["dir"] / "out"
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--precomputed", str(out),
                     "--key", "id", "--precomputed-only", "--no-access-log"])
    try:
        status, err = server.json("POST", "/v2/models/fraud/infer", {"inputs": [
            {"name": "id", "datatype": "BYTES", "shape": [1], "data": ["nobody"]}]})
        assert status == 404 and "'nobody' was not scored by run" in err["error"]
    finally:
        server.stop()
    dup = tmp_path / "dup"
    (dup / "in").mkdir(parents=True)
    x = frame(4, seed=9)
    pq.write_table(pa.table({"id": ["a", "b", "b", "c"], **{f: x[:, j] for j, f in enumerate(FEATURES)}}),
                   dup / "in" / "part.parquet")
    run("score", "-m", f"{setup['root']}@champion", "-i", str(dup / "in"), "-o", str(dup / "out"), "--workers", "1",
        "-q")
    done = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--model", f"{setup['root']}@champion",
                           "--precomputed", str(dup / "out"), "--key", "id", "--port", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "key 'b' appears more than once" in done.stderr


@pytest.mark.heavy  # a server process and its log read back
def test_logs_of_a_model_with_an_hour_feature_read_back_in_every_hive_reader(tmp_path: Path) -> None:
    """Issue 26, item 2: the log's ``hour=HH/`` folders collided with the sample model's ``hour`` feature:
    pyarrow refused the dataset and polars read every logged hour as the hour it was logged. The folders'
    keys are the log's own (``log_date``/``log_hour``); what was sent reads back, in both readers."""
    import polars as pl

    from tests.conftest import SAMPLE_MODEL

    features = ["amount", "hour", "merchant_category", "distance_km", "card_age_days", "n_tx_24h", "is_online",
                "is_foreign"]
    rng = np.random.default_rng(7)
    x = np.column_stack([rng.gamma(2, 30, 50), rng.integers(0, 24, 50), rng.integers(0, 10, 50),
                         rng.gamma(1, 5, 50), rng.integers(1, 3000, 50), rng.integers(0, 20, 50),
                         rng.integers(0, 2, 50), rng.integers(0, 2, 50)]).astype(np.float32)
    logs = tmp_path / "logs"
    server = Server(["--model", str(SAMPLE_MODEL), "--name", "fraud", "--log-requests", str(logs),
                     "--log-flush-seconds", "3600", "--no-access-log"])
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    assert server.json("POST", "/v2/models/fraud/infer", doc)[0] == 200
    assert server.stop() == 0
    files = list(logs.rglob("*.parquet"))
    assert files and all(f.parent.name.startswith("log_hour=") and f.parent.parent.name.startswith("log_date=")
                         for f in files)
    by_pyarrow = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    by_polars = pl.read_parquet(logs / "**/*.parquet", hive_partitioning=True)
    for name in ("hour", "amount"):
        sent = x[:, features.index(name)].astype(np.float64)
        np.testing.assert_array_equal(by_pyarrow.column(name).to_numpy(), sent)
        np.testing.assert_array_equal(by_polars[name].to_numpy(), sent)
    assert by_polars["log_hour"].n_unique() >= 1 and "log_date" in by_pyarrow.column_names


@pytest.mark.heavy  # a server process refused at start-up
def test_a_logged_column_named_as_a_partition_key_is_refused_at_startup(tmp_path: Path) -> None:
    """A feature called ``log_hour`` would be read as the folder's key again: one line, before listening."""
    x = frame(200, seed=3)
    names = ["f0", "f1", "f2", "f3", "f4", "log_hour"]
    data, _ = models.logreg(x, (x[:, 0] > 0).astype(np.int64), zipmap=False, names=names)
    (tmp_path / "m.onnx").write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--model", str(tmp_path / "m.onnx"),
                           "--port", "0", "--log-requests", str(tmp_path / "logs")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "'log_hour'" in errors[0] and "partition" in errors[0] and "listening" not in done.stderr


@pytest.mark.heavy  # a server over a batch run's output
def test_nightly_key_errors_name_the_key(setup: dict, nightly: dict) -> None:
    """Issue 26, items 10 and 11: a prediction column as --key was an internal error; a key alone that the run
    did not score, or a key of the wrong type, answered "inputs disagree on the number of rows: []"."""
    out = nightly["dir"] / "out"
    done = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--model", f"{setup['root']}@champion",
                           "--port", "0", "--precomputed", str(out), "--key", "probabilities"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "--key 'probabilities' is a prediction column" in errors[0] and "kept" in errors[0]
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--precomputed", str(out),
                     "--key", "id", "--no-access-log"])
    try:
        status, err = server.json("POST", "/v2/models/fraud/infer", {"inputs": [
            {"name": "id", "datatype": "BYTES", "shape": [1], "data": ["nobody"]}]})
        assert status == 404 and "key 'nobody' was not scored by run" in err["error"], err
        assert "send the features with the key" in err["error"]
        status, err = server.json("POST", "/v2/models/fraud/infer", {"inputs": [
            {"name": "id", "datatype": "INT64", "shape": [1], "data": [5]}]})
        assert status == 400 and err["error"] == ("input 'id' is INT64, but the key column 'id' of the nightly "
                                                  "scores holds string: send it as BYTES"), err
        status, _ = server.json("POST", "/v2/models/fraud/infer", {"inputs": [
            {"name": "id", "datatype": "BYTES", "shape": [1], "data": [nightly["ids"][3]]}]})
        assert status == 200
    finally:
        assert server.stop() == 0


@pytest.mark.heavy  # a server with a slow challenger, requests one chunk at a time
def test_a_slow_challenger_is_held_to_its_budget_and_every_skipped_row_is_counted(setup: dict,
                                                                                   tmp_path: Path) -> None:
    """Issue 26, item 3: a challenger ten times slower than the champion took the CPU the answers needed. The
    shadow scores what --shadow-budget pays for (a random sample of each chunk) and counts the rest: every
    answered row is scored or counted skipped, the skipped ones are null in the log, the scored ones equal
    the challenger's own oracle. (How much throughput that keeps is measured in make bench-serve.)"""
    slow, _ = models.mlp(len(FEATURES), hidden=(2048, 2048, 2048), seed=3)  # milliseconds for a few rows
    (tmp_path / "slow.onnx").write_bytes(models.set_feature_names(slow, FEATURES))
    logs = tmp_path / "logs"
    server = Server(["--model", f"{setup['root']}@champion", "--name", "fraud", "--challenger",
                     str(tmp_path / "slow.onnx"), "--shadow-budget", "0.001", "--log-requests", str(logs),
                     "--log-flush-seconds", "3600", "--no-access-log"])
    try:
        for i in range(30):  # one chunk at a time: each request after the last was shadowed or counted
            assert _post(server, frame(20, seed=200 + i))[0] == 200
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # bounded: the after-answer thread catches up
                section = server.json("GET", "/v2/models/fraud/drift")[1]["challenger"]
                if section["scored_rows"] + section["skipped_rows"] == 20 * (i + 1):
                    break
                time.sleep(0.02)
            assert section["scored_rows"] + section["skipped_rows"] == 20 * (i + 1), section
        assert section["budget"] == 0.001
        # the first chunk is scored (a probe: no cost known yet); what it cost is far more than 1 ms of budget
        # can pay back while the next 29 arrive, so they go unshadowed
        assert section["scored_rows"] >= 20 and section["skipped_rows"] > 0, section
        assert _metric(server, "batchserve_serve_shadow_skipped_rows_total") == section["skipped_rows"]
    finally:
        assert server.stop() == 0
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 600
    got = table.column("challenger_score").to_numpy(zero_copy_only=False)
    scored = ~np.isnan(got.astype(np.float64))
    assert int(scored.sum()) == section["scored_rows"]
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx.load_from_string(slow).graph.initializer}
    h = np.column_stack([table.column(f).to_numpy() for f in FEATURES])[scored].astype(np.float32).astype(np.float64)
    scale = np.abs(h).sum(axis=1)
    for i in range(4):  # the float64 oracle of the ReLU MLP, and a bound on what float32 sums may stray
        h = h @ weights[f"W{i}"] + weights[f"B{i}"]
        if i < 3:
            h = np.maximum(h, 0)
        scale = np.abs(h).sum(axis=1) + scale
    np.testing.assert_array_less(np.abs(got[scored].astype(np.float64) - h[:, 0]), 1e-5 * scale + 1e-6)


@pytest.mark.heavy  # a server, two promotions and two swaps
def test_the_nightly_version_gap_is_checked_again_on_every_swap(setup: dict, nightly: dict, tmp_path: Path) -> None:
    """Issue 27, item 4 (one part): the version-mismatch signal of --precomputed was checked only at start and
    when a newer run committed; a promotion that swapped the served model left it stale either way."""
    import shutil
    import signal

    root = tmp_path / "fraud"
    shutil.copytree(setup["root"], root)  # this test's own repository: its promotions touch no other test
    out = nightly["dir"] / "out"
    scored_by = json.loads((out / "_manifest.json").read_text())["model"]["version"]
    other = "2" if scored_by == "1" else "1"
    registry.promote(str(root), int(scored_by), "champion", {}, actor="t", message=None)
    server = Server(["--model", f"{root}@champion", "--name", "fraud", "--precomputed", str(out), "--key", "id",
                     "--poll-seconds", "3600", "--no-access-log"])
    try:
        assert _metric(server, "batchserve_serve_precomputed_version_mismatch") == 0
        for version, gap in ((other, 1), (scored_by, 0)):
            mark = len(server.lines)
            registry.promote(str(root), int(version), "champion", {}, actor="t", message=None)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for(f'"event": "swapped".*"to": "{version}"', since=mark, timeout=120)
            assert _metric(server, "batchserve_serve_precomputed_version_mismatch") == gap
            warned = [ln for ln in server.lines[mark:] if '"event": "precomputed_version_mismatch"' in ln]
            assert bool(warned) == bool(gap), server.lines[mark:]
    finally:
        assert server.stop() == 0

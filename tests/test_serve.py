"""``batchserve serve`` as a user meets it: a real server process on 127.0.0.1, called with
``tritonclient.http`` (a client nobody here wrote, JSON and binary) and plain HTTP. Every answer is
checked against the model's own library (scikit-learn) and onnxruntime called directly, row for row."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchserve import registry
from tests import models
from tests.conftest import FEATURES, features_matrix, make_table
from tests.serving import REPO, Server, running

TOKEN = "s3cret-token-for-tests"
#: tritonclient writes Inference-Header-Content-Length into the headers dict it is given: pass copies.
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Float32 models against float64 oracles: a few ulps of each probability.
TOL = 1e-5


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A model repository: version 1 a logistic regression (ZipMap), version 2 a LightGBM model."""
    d = tmp_path_factory.mktemp("serve")
    train = make_table(2000, seed=5)
    x, y = features_matrix(train), train.column("target").to_numpy()
    root = str(d / "fraud")
    v1, clf1 = models.logreg(x, y, zipmap=True, names=FEATURES)
    v2, clf2 = models.lightgbm(x, y, n_estimators=20, names=FEATURES)
    registry.register(root, v1, {}, actor="test", message=None)
    registry.register(root, v2, {}, actor="test", message=None)
    registry.promote(root, 1, "champion", {}, actor="test", message="first")
    (d / "token").write_text(TOKEN + "\n")
    return {"root": root, "clf": {"1": clf1, "2": clf2}, "data": {"1": v1, "2": v2}, "dir": d}


@pytest.fixture(scope="module")
def server(repo: dict) -> Iterator[Server]:
    yield from running(["--model", f"{repo['root']}@champion", "--name", "fraud", "--token-file",
                        str(repo["dir"] / "token"), "--max-body", "1048576", "--max-rows", "1000",
                        "--max-queue-rows", "4000", "--poll-seconds", "3600"])


def rows(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    table = make_table(n, seed=seed)
    return table, features_matrix(table)


def oracle(repo: dict, version: str, x: np.ndarray) -> np.ndarray:
    return repo["clf"][version].predict_proba(x.astype(np.float64))


def test_tritonclient_binary_and_json_equal_the_models_own_library(server: Server, repo: dict) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud", headers=AUTH)
    _, x = rows(37, seed=11)
    want = oracle(repo, "1", x)
    sess = ort.InferenceSession(repo["data"]["1"], providers=["CPUExecutionProvider"])
    direct_label = sess.run(["output_label"], {"X": x})[0]
    for binary in (True, False):
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("output_label", "output_probability")]
        result = client.infer("fraud", [inp], outputs=out, headers=dict(AUTH), request_id=f"req-{binary}")
        response = result.get_response()
        assert response["model_version"] == "1" and response["id"] == f"req-{binary}"
        probs = result.as_numpy("output_probability")
        assert probs.shape == (37, 2)
        np.testing.assert_allclose(probs, want, atol=TOL)
        np.testing.assert_array_equal(result.as_numpy("output_label"), direct_label)
        labels = next(o for o in response["outputs"] if o["name"] == "output_probability")["parameters"]["labels"]
        assert labels == ["0", "1"]


def test_one_input_per_feature_converts_as_score_does(server: Server, repo: dict) -> None:
    """Each feature its own [n] input, in its own type (int32, bool, float64...), in any order."""
    import tritonclient.http as httpclient

    table, x = rows(25, seed=12)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    inputs = []
    for name in reversed(FEATURES):
        values = table.column(name).to_numpy(zero_copy_only=False)
        kind = {"b": "BOOL", "i": "INT32" if values.dtype == np.int32 else "INT64"}.get(values.dtype.kind,
                                                                                           "FP32" if values.dtype == np.float32 else "FP64")
        inp = httpclient.InferInput(name, [25], kind)
        inp.set_data_from_numpy(values)
        inputs.append(inp)
    result = client.infer("fraud", inputs, headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("output_probability"), oracle(repo, "1", x), atol=TOL)


def test_answers_equal_batchserve_score_on_the_same_rows(server: Server, repo: dict, tmp_path: Path) -> None:
    table, x = rows(40, seed=13)
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "batchserve", "score", "-m", f"{repo['root']}@champion", "-i",
                           str(tmp_path / "in.parquet"), "-o", str(out), "-q", "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scored = pq.read_table(next(out.rglob("*.parquet")))
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    status, answer = server.json("POST", "/v2/models/fraud/infer", doc, AUTH)
    assert status == 200
    got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    np.testing.assert_array_equal(got["output_label"], scored.column("output_label").to_numpy())
    probs = scored.column("output_probability")
    for k, label in enumerate(probs.type):
        np.testing.assert_array_equal(got["output_probability"][:, k].astype(np.float32),
                                      probs.combine_chunks().field(k).to_numpy())
        assert label.name == str(k)


def test_metadata_lists_inputs_outputs_version_and_the_alias_event(server: Server) -> None:
    status, meta = server.json("GET", "/v2/models/fraud", headers=AUTH)
    assert status == 200
    assert meta["name"] == "fraud" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 6]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_label", "output_probability"]
    assert meta["parameters"]["features"] == FEATURES
    assert meta["parameters"]["alias_event"]["message"] == "first"
    assert server.json("GET", "/v2/models/fraud/versions/1", headers=AUTH)[0] == 200
    status, err = server.json("GET", "/v2/models/fraud/versions/2", headers=AUTH)
    assert status == 404 and "not being served" in err["error"]
    status, info = server.json("GET", "/v2", headers=AUTH)
    assert status == 200 and "binary_tensor_data" in info["extensions"]


GOOD = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 6], "data": [0.1, 0.2, 1, 2, 0, 1.5]}]}


def _x(**over: object) -> dict:
    spec = {"name": "X", "datatype": "FP32", "shape": [1, 6], "data": [0.1, 0.2, 1, 2, 0, 1.5], **over}
    return {"inputs": [spec]}


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object with inputs"),
    (json.dumps({"inputs": []}).encode(), 400, "no inputs"),
    (json.dumps(_x(name="Y")).encode(), 400, "unknown input 'Y'"),
    (json.dumps({"inputs": [{"name": "f0", "datatype": "FP32", "shape": [1], "data": [1]}]}).encode(), 400,
     "missing input 'f1'"),
    (json.dumps(_x(shape=[1, 5], data=[1, 2, 3, 4, 5])).encode(), 400, "has shape [1, 5]; the model takes [1, 6]"),
    (json.dumps(_x(shape=[2, 6])).encode(), 400, "holds 12 values but data has 6"),
    (json.dumps(_x(datatype="FP64")).encode(), 400, "datatype FP64; the model takes FP32"),
    (json.dumps(_x(datatype="FLOAT")).encode(), 400, "unknown datatype 'FLOAT'"),
    (json.dumps(_x(data=[1, 2, "x", 4, 5, 6])).encode(), 400, "not FP32"),
    (json.dumps({**_x(), "outputs": [{"name": "nope"}]}).encode(), 400, "unknown output 'nope'"),
    (json.dumps(_x(shape=[1001, 6], data=[0.0] * 6006)).encode(), 413, "--max-rows 1,000"),
    # issue 26, item 7: the model's input and per-feature inputs in one request was a 500 (IndexError)
    (json.dumps({"inputs": [_x()["inputs"][0], {"name": "f0", "datatype": "FP32", "shape": [1], "data": [1]}]}
                ).encode(), 400, "mixes the model's input 'X' with per-feature inputs ('f0'); send one or the other"),
    # item 12: data and binary_data_size together was answered from the binary part, silently
    (json.dumps(_x(parameters={"binary_data_size": 24})).encode(), 400,
     "input 'X' has both data and parameters.binary_data_size"),
    # item 14: parameters that are not an object were accepted when falsy
    (json.dumps({**_x(), "parameters": []}).encode(), 400, "parameters must be an object, got []"),
    (json.dumps({**_x(), "parameters": ""}).encode(), 400, 'parameters must be an object, got ""'),
    (json.dumps(_x(parameters=0)).encode(), 400, "input 'X': parameters must be an object, got 0"),
    (json.dumps({**_x(), "outputs": [{"name": "output_label", "parameters": False}]}).encode(), 400,
     "output 'output_label': parameters must be an object, got false"),
])
def test_bad_requests_get_a_4xx_naming_the_input_and_the_server_goes_on(
        server: Server, body: bytes, status: int, says: str) -> None:
    got, _headers, raw = server.request("POST", "/v2/models/fraud/infer", body, AUTH)
    assert got == status, raw
    error = json.loads(raw)
    assert list(error) == ["error"] and says in error["error"], error
    assert "\n" not in error["error"] and "Traceback" not in error["error"]
    assert server.json("POST", "/v2/models/fraud/infer", GOOD, AUTH)[0] == 200


def test_unknown_model_method_and_body_limits(server: Server) -> None:
    status, err = server.json("POST", "/v2/models/fruad/infer", GOOD, AUTH)
    assert status == 404 and "did you mean 'fraud'" in err["error"]
    assert server.json("GET", "/v2/models/fraud/infer", headers=AUTH)[0] == 405
    assert server.json("GET", "/etc/passwd", headers=AUTH)[0] == 404
    # Refused from Content-Length before the body is read: a raw socket sends the headers alone (a client
    # still writing a 1 MiB body would see the connection close under it, as it should).
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Length: 2000000\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:  # the response may arrive in pieces: read it whole
            reply += sock.recv(65536)
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413") and "--max-body" in json.loads(body)["error"]
    # The binary extension with a header length that does not fit the body.
    status, _, raw = server.request("POST", "/v2/models/fraud/infer", json.dumps(GOOD).encode(),
                                    {**AUTH, "Inference-Header-Content-Length": "99999"})
    assert status == 400 and "does not fit" in json.loads(raw)["error"]
    assert server.json("POST", "/v2/models/fraud/infer", GOOD, AUTH)[0] == 200


def test_a_token_guards_everything_but_the_health_checks(server: Server) -> None:
    assert server.json("GET", "/v2/health/live")[0] == 200
    assert server.json("GET", "/v2/health/ready")[0] == 200
    assert server.request("GET", "/ping")[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        for method, path in (("POST", "/v2/models/fraud/infer"), ("GET", "/v2/models/fraud"), ("GET", "/metrics"),
                             ("POST", "/invocations"), ("GET", "/v2")):
            status, got_headers, raw = server.request(method, path, json.dumps(GOOD).encode(), headers)
            assert status == 401, (method, path, headers)
            assert got_headers.get("www-authenticate") == "Bearer" and "bearer token" in json.loads(raw)["error"]


def test_nan_fail_refuses_nulls_and_sagemaker_contract(repo: dict, tmp_path: Path) -> None:
    """A second server: --nan fail, no token on loopback, the SageMaker routes."""
    server = Server(["--model", f"{repo['root']}@1", "--nan", "fail", "--access-log"])
    try:
        _, x = rows(3, seed=14)
        csv = "\n".join(",".join(repr(float(v)) for v in row) for row in x).encode()
        status, _, raw = server.request("POST", "/invocations", csv, {"Content-Type": "text/csv"})
        assert status == 200, raw
        preds = json.loads(raw)["predictions"]
        want = oracle(repo, "1", x)
        assert [p["output_label"] for p in preds] == list(want.argmax(axis=1))
        np.testing.assert_allclose([p["output_probability.1"] for p in preds], want[:, 1], atol=TOL)
        instances = [dict(zip(FEATURES, map(float, row), strict=True)) for row in x]
        status, answer = server.json("POST", "/invocations", {"instances": instances})
        assert status == 200 and answer["predictions"] == preds
        bad = dict(instances[0], f3=None)
        status, err = server.json("POST", "/invocations", {"instances": [bad]})
        assert status == 400 and "'f3'" in err["error"] and "--nan fail" in err["error"]
        status, answer = server.json("POST", "/v2/models/fraud/infer", GOOD)  # no --name: the folder's name
        assert status == 200 and answer["model_name"] == "fraud" and answer["model_version"] == "1"
        access = [r for r in server.records() if r.get("event") == "request"]
        assert access and all(r["request_id"] and "status" in r for r in access)
        assert any(r["version"] == "1" and r["status"] == 200 for r in access)
    finally:
        assert server.stop() == 0


def test_metrics_count_requests_batches_and_name_the_version(server: Server) -> None:
    server.json("POST", "/v2/models/fraud/infer", GOOD, AUTH)
    status, _, raw = server.request("GET", "/metrics", headers=AUTH)
    text = raw.decode()
    assert status == 200
    assert 'batchserve_serve_requests_total{endpoint="infer",status="200"}' in text
    assert 'batchserve_serve_model_info{alias="champion"' in text and 'version="1"' in text
    assert "batchserve_serve_batch_rows_bucket" in text and "batchserve_serve_loaded_models 1.0" in text


def test_request_id_is_echoed_and_logged(server: Server) -> None:
    status, headers, _ = server.request("POST", "/v2/models/fraud/infer", json.dumps(GOOD).encode(),
                                        {**AUTH, "X-Request-Id": "abc-123"})
    assert status == 200 and headers["x-request-id"] == "abc-123" and headers["x-model-version"] == "1"
    line = server.wait_for('"request_id": "abc-123"')
    assert json.loads(line)["version"] == "1"


def test_startup_failures_are_one_line_and_bad_settings_exit_2(repo: dict, tmp_path: Path) -> None:
    def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        import os
        return subprocess.run([sys.executable, "-m", "batchserve", "serve", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **(env or {})})

    done = serve("--model", str(tmp_path / "missing.onnx"), "--port", "0")
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0 and "model not found" in done.stderr
    done = serve("--model", repo["root"], "--host", "0.0.0.0")
    assert done.returncode == 2 and "--token-file" in done.stderr and "--allow-unauthenticated" in done.stderr
    done = serve("--model", repo["root"], "--max-rows", "0")
    assert done.returncode == 2 and "--max-rows" in done.stderr
    done = serve("--model", repo["root"], "--tls-cert", "x.pem")
    assert done.returncode == 2 and "--tls-key" in done.stderr
    for name in ("a/b", "../x", ".."):  # issue 26, item 13: it started, and the model was unreachable
        done = serve("--model", repo["root"], "--name", name, "--port", "0")
        assert done.returncode == 2 and "--name must be one URL path segment" in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0 and "listening" not in done.stderr
    done = serve("--model", f"{repo['root']}@nosuchalias", "--port", "0")
    assert done.returncode == 1 and "unknown alias 'nosuchalias'" in done.stderr


def test_score_does_not_import_the_server() -> None:
    """`batchserve score` must not pay for serving: neither the CLI nor the pipeline imports uvicorn,
    and the server's own modules import no pydantic, FastAPI or Starlette."""
    code = ("import sys; import batchserve.cli, batchserve.pipeline; "
            "bad = [m for m in ('uvicorn', 'batchserve.online.app', 'orjson', 'pydantic') if m in sys.modules]; "
            "import batchserve.online.server; "
            "bad += [m for m in ('pydantic', 'fastapi', 'starlette') if m in sys.modules]; print(bad)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_worker_processes_answer_and_log_as_their_parent(repo: dict) -> None:
    """--workers 2: two processes on one port, each loading the model; their lines are JSON like the parent's."""
    server = Server(["--model", f"{repo['root']}@1", "--name", "fraud", "--workers", "2", "--access-log"])
    try:
        _, x = rows(4, seed=15)
        doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [4, 6], "data": x.ravel().tolist()}]}
        for _ in range(10):
            status, answer = server.json("POST", "/v2/models/fraud/infer", doc)
            assert status == 200 and answer["model_version"] == "1"
        served = server.wait_for(r'"event": "serving"')
        assert json.loads(served)["version"] == "1"  # a worker's line, in the parent's JSON format
        assert len({r["message"] for r in server.records() if r.get("event") == "serving"}) >= 1
    finally:
        assert server.stop() == 0


def test_invocations_answer_in_the_form_accept_asks_for(server: Server) -> None:
    """Issue 27, item 7 (one part): /invocations answered JSON whatever Accept said. CSV (a line a row, the
    fields in order, no header) and JSON Lines carry the same values as JSON; an unserved form is a 406 that
    scores nothing; q-values and wildcards pick as HTTP says."""
    _, x = rows(3, seed=21)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in x).encode()
    head = {**AUTH, "Content-Type": "text/csv"}
    status, got, raw = server.request("POST", "/invocations", body, head)
    assert status == 200 and got["content-type"] == "application/json"
    want = json.loads(raw)["predictions"]
    assert len(want) == 3 and all(len(r) >= 2 for r in want)
    status, got, raw = server.request("POST", "/invocations", body, {**head, "Accept": "text/csv"})
    assert status == 200 and got["content-type"].startswith("text/csv") and got["x-model-version"] == "1"
    lines = raw.decode().splitlines()
    assert len(lines) == 3
    for line, row in zip(lines, want, strict=True):
        assert [float(c) for c in line.split(",")] == [float(v) for v in row.values()]
    status, got, raw = server.request("POST", "/invocations", body, {**head, "Accept": "application/jsonlines"})
    assert status == 200 and got["content-type"] == "application/jsonlines"
    assert [json.loads(ln) for ln in raw.decode().splitlines()] == want
    status, got, raw = server.request("POST", "/invocations", body, {**head, "Accept": "text/html, */*;q=0.1"})
    assert status == 200 and json.loads(raw)["predictions"] == want
    before = server.request("GET", "/metrics", None, AUTH)[2].decode()
    status, _, raw = server.request("POST", "/invocations", body, {**head, "Accept": "image/png"})
    assert status == 406 and list(json.loads(raw)) == ["error"]
    assert "'image/png'" in json.loads(raw)["error"] and "text/csv" in json.loads(raw)["error"]
    after = server.request("GET", "/metrics", None, AUTH)[2].decode()

    def scored(text: str) -> float:
        return sum(float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("batchserve_serve_rows_total"))

    assert scored(after) == scored(before)  # the 406 ran no inference

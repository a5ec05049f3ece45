"""Hot swap under load, and SIGTERM under load: a real server process following ``root@alias`` while
client threads send requests and the alias is promoted and rolled back."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from batchserve import registry
from tests import models
from tests.conftest import FEATURES, features_matrix, make_table
from tests.serving import Server

TOL = 1e-5


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("swap")
    train = make_table(2000, seed=6)
    x, y = features_matrix(train), train.column("target").to_numpy()
    root = str(d / "fraud")
    v1, clf1 = models.logreg(x, y, zipmap=False, names=FEATURES)
    # Version 2: the same inputs (X, FP32 [n, 6]), other weights (trained on other labels).
    v2, clf2 = models.logreg(x, (x[:, 1] > 2).astype(np.int64), zipmap=False, names=FEATURES)
    registry.register(root, v1, {}, actor="test", message=None)
    registry.register(root, v2, {}, actor="test", message=None)
    # Version 3 takes other features: requests version 1 accepted would fail on it.
    v3, _ = models.logreg(x[:, :5], y, zipmap=False, names=FEATURES[:5])
    registry.register(root, v3, {}, actor="test", message=None)
    registry.promote(root, 1, "champion", {}, actor="test", message=None)
    return {"root": root, "clf": {"1": clf1, "2": clf2}}


@pytest.fixture(scope="module")
def server(repo: dict) -> Iterator[Server]:
    s = Server(["--model", f"{repo['root']}@champion", "--name", "fraud", "--poll-seconds", "0.2",
                "--no-access-log"])
    yield s
    s.stop()


def _infer(port: int, x: np.ndarray) -> tuple[int, dict]:
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/fraud/infer", data=json.dumps(doc).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _probabilities(answer: dict) -> np.ndarray:
    out = next(o for o in answer["outputs"] if o["name"] == "probabilities")
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])


def _metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_promote_and_rollback_under_load_drop_nothing(server: Server, repo: dict) -> None:
    x = features_matrix(make_table(8, seed=21))
    want = {v: clf.predict_proba(x.astype(np.float64)) for v, clf in repo["clf"].items()}
    stop = threading.Event()
    results: list[tuple[int, dict]] = []

    def client() -> None:
        while not stop.is_set():
            results.append(_infer(server.port, x))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for target in ("2", "1", "2"):
            mark = len(server.lines)
            if target == "2":
                registry.promote(repo["root"], 2, "champion", {}, actor="swapper", message=f"to {target}")
            else:
                registry.rollback(repo["root"], "champion", {}, actor="swapper", message="back")
            server.wait_for(rf'"event": "swapped".*"to": "{target}"', timeout=120, since=mark)
            # Each swap has requests on the new version before the next move.
            seen = len(results)
            while len(results) < seen + 20:
                time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    versions = {answer["model_version"] for _, answer in results}
    assert versions == {"1", "2"}
    for _, answer in results:  # every answer equals the oracle of the version it names
        np.testing.assert_allclose(_probabilities(answer), want[answer["model_version"]], atol=TOL)
    swaps = [r for r in server.records() if r.get("event") == "swapped"]
    assert [s["to"] for s in swaps[-3:]] == ["2", "1", "2"]
    assert "swapper" in server.lines[-1] or any("swapper" in line for line in server.lines)
    # Memory back to one model: the swapped-out session is closed once its queue drained.
    deadline = time.monotonic() + 30
    while _metric(server, "batchserve_serve_loaded_models") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(server, "batchserve_serve_loaded_models") == 1
    assert _metric(server, "batchserve_serve_reloads_total") >= 3
    meta = json.loads(urllib.request.urlopen(server.url + "/v2/models/fraud", timeout=30).read())
    assert meta["versions"] == ["2"] and meta["parameters"]["alias_event"]["actor"] == "swapper"


def test_an_incompatible_version_is_refused_and_the_old_one_keeps_serving(server: Server, repo: dict) -> None:
    before = _infer(server.port, features_matrix(make_table(2, seed=3)))[1]["model_version"]
    registry.promote(repo["root"], 3, "champion", {}, actor="test", message="bad idea")
    line = server.wait_for(r'"event": "reload_failed".*"version": "3"', timeout=120)
    assert "inputs differ" in line
    status, answer = _infer(server.port, features_matrix(make_table(2, seed=3)))
    assert status == 200 and answer["model_version"] == before
    assert _metric(server, "batchserve_serve_reload_failures_total") == 1
    time.sleep(1)  # several polls later it has not retried the refused version
    assert _metric(server, "batchserve_serve_reload_failures_total") == 1
    # The next move of the alias is picked up as usual.
    other = "2" if before == "1" else "1"  # whichever compatible version is not being served
    mark = len(server.lines)
    registry.promote(repo["root"], int(other), "champion", {}, actor="test", message="fixed")
    server.wait_for(rf'"event": "swapped".*"to": "{other}"', timeout=120, since=mark)


def test_sigterm_under_load_answers_what_is_in_flight_and_exits_0(repo: dict) -> None:
    server = Server(["--model", f"{repo['root']}@1", "--name", "fraud", "--no-access-log"])
    x = features_matrix(make_table(500, seed=22))
    results: list[int] = []
    started = threading.Event()

    def client() -> None:
        started.set()
        for _ in range(20):
            try:
                results.append(_infer(server.port, x)[0])
            except OSError:  # refused once the listener closed: never an answer lost mid-way
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while not results:
        time.sleep(0.005)
    code = server.stop(signal.SIGTERM)
    for t in threads:
        t.join()
    assert code == 0
    assert results and set(results) == {200}
    assert any('"event": "stopped"' in line for line in server.lines)


def test_sighup_checks_the_alias_at_once_and_tls_serves_https(repo: dict, tmp_path) -> None:
    """No poll for an hour: SIGHUP alone makes the server see the promotion. Over HTTPS, with a
    self-signed certificate made by openssl."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    registry.promote(repo["root"], 1, "champion", {}, actor="test", message=None)
    server = Server(["--model", f"{repo['root']}@champion", "--name", "fraud", "--poll-seconds", "3600",
                     "--tls-cert", str(cert), "--tls-key", str(key), "--no-access-log"])
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        url = f"https://127.0.0.1:{server.port}/v2/models/fraud"
        assert json.loads(urllib.request.urlopen(url, context=context, timeout=30).read())["versions"] == ["1"]
        mark = len(server.lines)
        registry.promote(repo["root"], 2, "champion", {}, actor="hup", message=None)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r'"event": "swapped".*"to": "2"', timeout=120, since=mark)
        assert json.loads(urllib.request.urlopen(url, context=context, timeout=30).read())["versions"] == ["2"]
    finally:
        assert server.stop() == 0

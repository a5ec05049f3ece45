"""What a slow, cut-off or misconfigured client or operator meets (issue 26, items 8, 9 and 15), against real
server processes on 127.0.0.1 and raw sockets: deadlines for headers and bodies, a cap on connections, a
drain that answers what it cuts off, and TLS files checked before anything listens."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.serving import REPO, Server

#: Six server processes and raw-socket waits: in make test-heavy, which CI runs beside make test.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

GOOD = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 6], "data": [0.1, 0.2, 1, 2, 0, 1.5]}]}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    data, _ = models.logreg(x, (x[:, 0] > 0).astype(np.int64), zipmap=False, names=[f"f{i}" for i in range(6)])
    path = tmp_path_factory.mktemp("limits") / "m.onnx"
    path.write_bytes(data)
    return str(path)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Read one whole response (bounded by the socket's timeout) up to the server's close."""
    raw = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def _partial_body(port: int, path: str = "/v2/models/m/infer") -> socket.socket:
    sock = _connect(port)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n{\"inputs\": [".encode())
    return sock


def test_slow_headers_and_bodies_get_a_408_and_lose_their_connection(model: str) -> None:
    """Headers a byte at a time and bodies that never finish were all still open after 50 s: each now gets a
    408 within --read-timeout and its connection closes, while normal requests go on being answered."""
    server = Server(["--model", model, "--name", "m", "--read-timeout", "1", "--no-access-log"])
    try:
        slow_headers = [_connect(server.port) for _ in range(5)]
        for s in slow_headers:
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        idle = _connect(server.port)  # opened, never a byte
        slow_bodies = [_partial_body(server.port) for _ in range(5)]
        assert server.json("POST", "/v2/models/m/infer", GOOD)[0] == 200  # meanwhile: answered
        for s in [*slow_headers, idle]:
            status, headers, body = _answer(s)
            assert status == 408 and headers["connection"] == "close", (status, body)
            assert body["error"] == "request headers did not arrive within --read-timeout 1 s"
            s.close()
        for s in slow_bodies:
            status, headers, body = _answer(s)
            assert status == 408 and headers["connection"] == "close"
            assert body["error"].startswith("request body did not arrive within --read-timeout 1 s")
            s.close()
        assert server.json("POST", "/v2/models/m/infer", GOOD)[0] == 200
    finally:
        assert server.stop() == 0


def test_connections_past_the_cap_are_refused_at_once_and_the_rest_served(model: str) -> None:
    server = Server(["--model", model, "--name", "m", "--max-connections", "8", "--no-access-log"])
    held: list[socket.socket] = []
    try:
        for _ in range(8):
            held.append(_connect(server.port))
            held[-1].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held[-1].recv(4096).startswith(b"HTTP/1.1 200")  # open, and kept alive
        extra = _connect(server.port)
        status, headers, body = _answer(extra)
        assert status == 503 and headers["connection"] == "close"
        assert body["error"] == "the server has --max-connections 8 open connections; retry shortly"
        held.pop().close()
        deadline = time.monotonic() + 60  # bounded: the server sees the close on its next loop turn
        while time.monotonic() < deadline:
            status = server.json("POST", "/v2/models/m/infer", GOOD)[0]
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200
    finally:
        for s in held:
            s.close()
        assert server.stop() == 0
    assert any('"event": "connection_refused"' in ln for ln in server.lines)


def test_requests_cut_off_by_the_drain_get_a_json_503_and_one_line_each(model: str) -> None:
    """--drain-seconds ran out on requests still in flight: text/plain 500s and three tracebacks. Each now gets
    a JSON 503 it can retry, and the log one line, and the server still exits 0."""
    server = Server(["--model", model, "--name", "m", "--drain-seconds", "1", "--no-access-log"])
    cut = [_partial_body(server.port) for _ in range(3)]
    assert server.json("POST", "/v2/models/m/infer", GOOD)[0] == 200
    server.proc.send_signal(15)
    answers = [_answer(s) for s in cut]
    server.proc.wait(120)  # one SIGTERM: a second one during the interpreter's teardown would kill it
    assert server.stop() == 0
    for status, headers, body in answers:
        assert status == 503 and headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        assert body == {"error": "the server stopped before this request was answered (--drain-seconds 1 ran "
                                 "out); retry it"}
    assert sum('"event": "drain_cut"' in ln for ln in server.lines) == 3
    assert not any("Traceback" in ln or "Exception in ASGI application" in ln for ln in server.lines), server.lines


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_tls_files_are_checked_before_anything_listens(model: str, tmp_path: Path) -> None:
    """A missing or non-PEM --tls-cert/--tls-key said "listening on https", then failed every handshake."""
    cert, key, other = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other.pem"
    for c, k in ((cert, key), (tmp_path / "c2.pem", other)):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(k), "-out", str(c),
                        "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [
        ((tmp_path / "missing.pem", key), "--tls-cert not found", "missing.pem"),
        ((tmp_path / "junk.pem", key), "--tls-cert is not a certificate in PEM form", "junk.pem"),
        ((cert, cert), "--tls-key is not a private key in PEM form", "cert.pem"),
        ((cert, other), "--tls-key does not go with --tls-cert", "other.pem"),
    ]
    for (c, k), says, names in cases:
        done = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--model", model, "--port", "0",
                               "--tls-cert", str(c), "--tls-key", str(k)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert says in lines[0] and names in lines[0] and "listening" not in done.stderr, lines[0]

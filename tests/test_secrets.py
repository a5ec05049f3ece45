"""Secrets never in clear (issue 20, item 6), found by structure and not by key name alone: nested
storage options (which also keep their type), connection strings, URL userinfo in settings and in
any log or error line, and a Pushgateway URL with credentials (used, not printed)."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from batchserve.config import resolve_score_config
from batchserve.config.secrets import redact, redact_text
from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
from tests.test_cli import BIN


def test_redaction_goes_by_structure() -> None:
    got = redact({
        "client_kwargs": {"aws_secret_access_key": "S1", "region_name": "eu", "config": {"session_token": "S2"}},
        "connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3;EndpointSuffix=x",
        "sas": "BlobEndpoint=https://a;SharedAccessSignature=S4",
        "endpoint_url": "http://minio:S5@host:9000",
        "anon": False,
    })
    assert "S1" not in json.dumps(got) and "S2" not in json.dumps(got) and "S3" not in json.dumps(got)
    assert "S4" not in json.dumps(got) and "S5" not in json.dumps(got)
    assert got["client_kwargs"]["region_name"] == "eu" and got["anon"] is False
    assert got["connection_string"] == "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=x"
    assert redact_text("cannot read s3://k:v@b/x and http://u:p@h/m.onnx, not user@host") == (
        "cannot read s3://k:***@b/x and http://u:***@h/m.onnx, not user@host")


def test_nested_job_file_options_keep_their_type_and_their_secrets_are_masked(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[score]\nmodel = "m"\ninput = "i"\noutput = "o"\n[score.storage_options.client_kwargs]\n'
                   'region_name = "eu-west-1"\naws_secret_access_key = "TOPSECRET"\n')
    cfg = resolve_score_config({}, job_file=str(job), env={})
    assert cfg.storage == {"client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "TOPSECRET"}}
    assert "TOPSECRET" not in json.dumps(cfg.redacted())
    assert cfg.redacted()["storage_options"]["client_kwargs"]["region_name"] == "eu-west-1"
    hash(cfg)  # still a frozen, hashable value


@pytest.mark.slow
def test_a_nested_table_reaches_s3_as_a_table(tmp_path: Path, s3: dict) -> None:
    """On S3 the flattened table failed: AttributeError: 'str' object has no attribute 'copy'."""
    out = f"s3://lake/nested-{tmp_path.name}/out"
    job = tmp_path / "job.toml"
    job.write_text(f'[score]\nmodel = "{SAMPLE_MODEL}"\ninput = "{SAMPLE_DATA / "date=2026-11-01"}"\noutput = "{out}"\n'
                   f'[score.storage_options]\nendpoint_url = "{s3["endpoint_url"]}"\nkey = "{s3["key"]}"\n'
                   f'secret = "{s3["secret"]}"\n[score.storage_options.client_kwargs]\nregion_name = "us-east-1"\n')
    proc = subprocess.run([str(BIN), "score", "--job", str(job), "-q"], capture_output=True, text=True, timeout=180)
    assert (proc.returncode, proc.stderr) == (0, "")
    import s3fs

    fs = s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], endpoint_url=s3["endpoint_url"])
    m = json.loads(fs.cat(f"{out}/_manifest.json"))
    assert m["run"]["config"]["storage_options"] == {"client_kwargs": {"region_name": "us-east-1"},
                                                     "endpoint_url": s3["endpoint_url"], "key": "***", "secret": "***"}


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_password_in_the_model_url_is_never_printed(tmp_path: Path, log_format: str) -> None:
    proc = subprocess.run([str(BIN), "score", "-m", "http://analyst:PASS123@127.0.0.1:9/m.onnx", "-i",
                           str(SAMPLE_DATA), "-o", str(tmp_path / "o"), "--log-format", log_format],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "PASS123" not in proc.stderr + proc.stdout
    assert "http://analyst:***@127.0.0.1:9/m.onnx" in proc.stderr


class _Capture(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        _Capture.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_pushgateway_credentials_are_used_not_printed(tmp_path: Path) -> None:
    """http://ops:PASS@host was refused with an error line printing the password; it now authenticates."""
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://ops:PASS789@127.0.0.1:{server.server_port}"
        proc = subprocess.run([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA / "date=2026-11-01"),
                               "-o", str(tmp_path / "o"), "-q", "--pushgateway", url],
                              capture_output=True, text=True, timeout=120)
        assert (proc.returncode, proc.stderr) == (0, "")
        assert _Capture.seen == ["Basic " + base64.b64encode(b"ops:PASS789").decode()]
        assert "PASS789" not in (tmp_path / "o" / "_manifest.json").read_text()
        bad = subprocess.run([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "-o",
                              str(tmp_path / "o2"), "--pushgateway", "http://ops:PASS789@no such host:9091"],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "PASS789" not in bad.stderr and "ops:***@" in bad.stderr
    finally:
        server.shutdown()
        server.server_close()

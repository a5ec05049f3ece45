"""A real ``batchserve serve`` process on 127.0.0.1 for the server tests: started on port 0 (the port
it prints), stopped by PID, never left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on https?://[^:]+:(\d+)")


class Server:
    """One server process: its port, its log lines, and plain-HTTP helpers."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120) -> None:
        cmd = [sys.executable, "-m", "batchserve", "serve", "--port", "0", "--log-format", "json", *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.port = 0
        started = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = _LISTENING.search(line)
                if m and not self.port:
                    self.port = int(m.group(1))
                    started.set()
            started.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        started.wait(timeout)
        if not self.port:
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-20:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def records(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, doc: object | None = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict]:
        body = None if doc is None else json.dumps(doc).encode()
        status, _, raw = self.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        return status, json.loads(raw) if raw else {}

    def wait_for(self, pattern: str, timeout: float = 60, since: int = 0) -> str:
        """The first log line from line ``since`` on that matches (``since=len(server.lines)`` before an action)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines)[since:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines[-20:]))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal, wait, and return the exit code; a code other than 0 prints the server's last lines
        (pytest shows them with the failure)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5)
        if self.proc.returncode != 0:
            print("\n".join(self.lines[-30:]))
        return self.proc.returncode


def running(args: Sequence[str], env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(args, env)
    try:
        yield server
    finally:
        server.stop()

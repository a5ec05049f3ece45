"""pipeline/output.py: the output lock (live, stale, taken over) and the checks around the output."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.config import resolve_score_config
from batchserve.errors import LockedError
from batchserve.pipeline import output


def _ago(hours: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_which_locks_are_live() -> None:
    here = socket.gethostname()
    assert output.lock_is_live({"host": here, "pid": os.getpid()})
    assert not output.lock_is_live({"host": here, "pid": _dead_pid()})
    assert not output.lock_is_live({"host": here, "pid": "not-a-pid"})
    # another host: its pid means nothing here, so age decides
    assert output.lock_is_live({"host": "elsewhere", "pid": 1, "started_at": _ago(1)})
    assert not output.lock_is_live({"host": "elsewhere", "pid": 1, "started_at": _ago(output.STALE_LOCK_HOURS + 1)})
    assert not output.lock_is_live({"host": "elsewhere", "started_at": "garbage"})


@pytest.mark.parametrize("holder", ["same-host-dead-pid", "other-host-stale"])
def test_a_stale_lock_is_taken_over_and_released(tmp_path: Path, holder: str, caplog) -> None:
    cfg = resolve_score_config({"model": "m", "input": "i", "output": str(tmp_path)}, env={})
    lock = tmp_path / output.LOCK_NAME
    stale = ({"run_id": "old", "host": socket.gethostname(), "pid": _dead_pid(), "started_at": _ago(0)}
             if holder == "same-host-dead-pid" else
             {"run_id": "old", "host": "elsewhere", "pid": 1, "started_at": _ago(output.STALE_LOCK_HOURS + 1)})
    lock.write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="batchserve"):
        with output.output_lock(cfg, "new-run"):
            assert json.loads(lock.read_text())["run_id"] == "new-run"
    assert "taking over a stale lock from run old" in caplog.text
    assert not lock.exists()


def test_a_live_lock_from_another_host_is_refused_and_kept(tmp_path: Path) -> None:
    cfg = resolve_score_config({"model": "m", "input": "i", "output": str(tmp_path)}, env={})
    lock = tmp_path / output.LOCK_NAME
    lock.write_text(json.dumps({"run_id": "theirs", "host": "elsewhere", "pid": 1, "started_at": _ago(1)}))
    before = lock.read_text()
    with pytest.raises(LockedError, match="run theirs, pid 1 on elsewhere"):
        with output.output_lock(cfg, "mine"):
            pass
    assert lock.read_text() == before


def test_staging_names_are_flat_and_one_per_path() -> None:
    """Output files are staged flat in their run's staging folder (no folder per file to make and
    remove), under names that never collide and fit a file system's 255-byte limit."""
    from batchserve.layout import staging_name

    rels = ["part=000/data.parquet", "part=000%2Fdata.parquet", "part%3D000/data.parquet", "a/b/c.parquet",
            "a%2Fb/c.parquet", "a/b%2Fc.parquet", "x.parquet", "d=" + "y" * 300 + "/f.parquet",
            "d=" + "y" * 300 + "/g.parquet"]
    names = [staging_name(r) for r in rels]
    assert len(set(names)) == len(rels)
    assert all("/" not in n and len(n.encode()) <= 200 for n in names)
    assert staging_name("part=000/data.parquet") == "part=000%2Fdata.parquet"


@pytest.mark.slow
def test_an_output_inside_a_locked_output_is_refused(tmp_path: Path) -> None:
    """Issue 20, item 11: run B into X/sub while run A held X's lock was never checked, and A's _SUCCESS
    then covered B's files unlisted. A live enclosing lock refuses B with one line; a stale one does not."""
    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
    from tests.test_cli import BIN

    outer = tmp_path / "X"
    outer.mkdir()
    lock = outer / output.LOCK_NAME
    lock.write_text(json.dumps({"run_id": "run-a", "host": socket.gethostname(), "pid": os.getpid(),
                                "started_at": _ago(0)}))
    argv = [str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA / "date=2026-11-01"), "-q"]
    proc = subprocess.run([*argv, "-o", str(outer / "sub" / "deeper")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"the output lies inside {outer}, which another batchserve run is writing (run run-a" in proc.stderr
    assert not (outer / "sub").exists()
    lock.write_text(json.dumps({"run_id": "run-a", "host": socket.gethostname(), "pid": _dead_pid(),
                                "started_at": _ago(0)}))
    stale = subprocess.run([*argv, "-o", str(outer / "sub")], capture_output=True, text=True, timeout=120)
    assert stale.returncode == 0, stale.stderr

"""What a person at a terminal sees (issue 19, part 7), in a real terminal (tmux): the progress bar
moves within one large file, and Ctrl-C with Dask worker processes gives one line and exit 130, with
no worker traceback or leak report on the screen and no process left behind. Nothing here asserts
on time: the waits are bounds against a hang, and the figures (about 3 s from Ctrl-C to the prompt)
are in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import batchserve
from batchserve.pipeline import ProgressEvent, cluster
from batchserve.worker import context
from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
from tests.test_cli import BIN

pytestmark = pytest.mark.slow


def _big_input(root: Path, copies: int) -> Path:
    table = ds.dataset(SAMPLE_DATA, format="parquet").to_table()
    (root / "in").mkdir(parents=True)
    pq.write_table(pa.concat_tables([table] * copies), root / "in" / "big.parquet", row_group_size=100_000)
    return root / "in"


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-500"], capture_output=True,
                          text=True, timeout=30).stdout


def _wait_for(session: str, pattern: str, bound_s: float = 120) -> re.Match[str]:
    end = time.monotonic() + bound_s  # a bound against a hang, not a measurement
    while time.monotonic() < end:
        found = re.search(pattern, _pane(session))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared:\n{_pane(session)}")


@pytest.mark.heavy
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make system-deps installs it)")
def test_ctrl_c_with_worker_processes_is_one_line_and_the_bar_moves_within_a_file(tmp_path: Path) -> None:
    src = _big_input(tmp_path, 20)  # 2M rows in one file: worker processes, pieces by row group
    session = f"batchserve-test-{tmp_path.name}"[:50]
    command = (f"cd {tmp_path} && {BIN} score -m {SAMPLE_MODEL} -i {src} -o out --workers 2; "
               "echo EXIT=$?; sleep 300")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "60", command], check=True,
                   timeout=30)
    try:
        shell = int(subprocess.run(["tmux", "display", "-p", "-t", session, "#{pane_pid}"], capture_output=True,
                                   text=True, timeout=30).stdout.strip())
        moving = _wait_for(session, r"0/1 files\s+([\d,]+)/2,000,000 rows")
        assert 0 < int(moving.group(1).replace(",", "")) < 2_000_000  # rows within the one file, before it ends
        workers = [p for p in psutil.Process(shell).children(recursive=True) if "python" in p.name().lower()]
        assert len(workers) >= 3  # the client and its two worker processes
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True, timeout=30)
        code = _wait_for(session, r"EXIT=(\d+)")
        assert code.group(1) == "130"
        screen = _pane(session)
        after = screen[screen.index("runs on CPU"):]
        for noise in ("Traceback", "KeyboardInterrupt", "nanobind", "leaked"):
            assert noise not in screen, screen
        errors = [ln for ln in after.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: interrupted by SIGINT"), screen
        # The client has exited; its worker processes follow on their own (bounded wait, not a timing assert:
        # on a loaded CI machine one was still closing when the EXIT line appeared).
        _, alive = psutil.wait_procs(workers, timeout=60)
        left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], left
        assert (tmp_path / "out" / "_manifest.json").exists() and not (tmp_path / "out" / "_SUCCESS").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)


def test_the_in_process_engine_reports_rows_within_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch reported (interval 0): the events climb within the file, below its total, before the
    file's own event, and the counts end exact."""
    monkeypatch.setattr(context.RowReporter, "EVERY_S", 0.0)
    monkeypatch.setattr(cluster, "default_workers", lambda: 1)  # the in-process engine on any machine
    src = _big_input(tmp_path, 1)
    events: list[ProgressEvent] = []
    result = batchserve.score(model=str(SAMPLE_MODEL), input=str(src), output=str(tmp_path / "out"),
                              batch_size=10_000, on_progress=events.append)
    assert result.manifest.run.engine is not None and result.manifest.run.engine.kind == "local-threads"
    within = [e.rows_done for e in events if e.phase == "batch"]
    assert len(within) >= 5 and within == sorted(within) and 0 < within[0] and within[-1] <= 100_000
    assert [e.phase for e in events][-2:] == ["file", "done"] and events[-1].rows_done == 100_000

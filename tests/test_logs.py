"""The CLI's log handlers: formats, and SIGTERM landing inside a log call (it must not be swallowed)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from batchserve.cli.common import error_line, setup_logging, state
from batchserve.errors import Interrupted


class _RaisesWhenFormatted:
    """A log argument whose formatting raises, the way SIGTERM's handler raises wherever the main thread is."""

    def __str__(self) -> str:
        raise Interrupted("interrupted by SIGTERM", signum=15)


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("batchserve")
    saved = (logger.handlers[:], logger.level, logger.propagate, dict(state))
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[:3]
    state.clear()
    state.update(saved[3])


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_an_interrupt_inside_a_log_call_is_raised_not_swallowed(fmt: str, tmp_path: Path) -> None:
    setup_logging(False, False, fmt, str(tmp_path / "run.log"))
    with pytest.raises(Interrupted) as info:
        logging.getLogger("batchserve").info("committed %s", _RaisesWhenFormatted())
    assert info.value.exit_code == 143
    # an ordinary formatting bug is still logging's to report, not a crash of the run
    logging.getLogger("batchserve").info("bad %d", "not a number")


def test_json_records_carry_event_fields_and_the_run_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state["run_id"] = "20261122T030001Z-abcdef"
    setup_logging(False, False, "json", str(tmp_path / "run.log"))
    logging.getLogger("batchserve").info("committed %s (%d rows)", "s3://b/x.parquet", 10, extra={"fields": {
        "event": "committed", "path": "s3://b/x.parquet", "rows": 10}})
    for text in (capsys.readouterr().err, (tmp_path / "run.log").read_text()):
        rec = json.loads(text.strip())
        assert rec["event"] == "committed" and rec["rows"] == 10 and rec["run_id"] == "20261122T030001Z-abcdef"
        assert rec["message"] == "committed s3://b/x.parquet (10 rows)" and rec["time"].endswith("Z")
    line = json.loads(error_line("no Parquet files found (in/)", 1))
    assert (line["level"], line["event"], line["exit_code"], line["run_id"]) == ("error", "failed", 1,
                                                                                 "20261122T030001Z-abcdef")
    state["format"] = "plain"
    assert error_line("boom", 1) == "error: boom (run 20261122T030001Z-abcdef)"


@pytest.mark.slow
def test_a_newline_in_a_file_name_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """Every plain line (stderr and --log-file) is one record: control characters in values are escaped."""
    import shutil
    import subprocess

    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
    from tests.test_cli import BIN

    forged = "a\n2026-12-04T00:00:00.000Z ERROR batchserve forged.parquet"
    (tmp_path / "in").mkdir()
    shutil.copy(SAMPLE_DATA / "date=2026-11-01" / "part-0.parquet", tmp_path / "in" / forged)
    log = tmp_path / "run.log"
    proc = subprocess.run([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--log-file", str(log)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stderr, log.read_text()):
        lines = text.splitlines()
        assert all(re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (INFO|WARNING) batchserve \[", ln) for ln in lines), lines
        assert not any(ln.startswith("2026-12-04T00:00:00.000Z ERROR") for ln in lines)
        assert any("a\\n2026-12-04T00:00:00.000Z ERROR batchserve forged.parquet" in ln for ln in lines)

"""What every command shares: the one-line error contract, logging setup, and the progress bar."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from batchserve import pipeline
from batchserve.config import parse_storage_options
from batchserve.errors import BatchserveError, exit_code_of

__all__ = ["fail", "guard", "setup_logging", "columns", "BarProgress", "storage_options", "storage_flag", "err_console"]

err_console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = BatchserveError.exit_code) -> NoReturn:
    # One line, no markup interpretation: paths may contain [brackets].
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def guard(debug: bool, fn: Callable[[], T]) -> T:
    """Run a library call, turning user errors into the one-line contract."""
    try:
        return fn()
    except BatchserveError as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        fail("interrupted", exit_code_of(exc))


def setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("batchserve")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def columns(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [c.strip() for c in value.split(",") if c.strip()]


class BarProgress:
    """A rich progress bar (files and rows, rows/s) for people at a terminal."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files  {task.fields[rows]} rows  {task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.task: Any = None

    def __call__(self, ev: pipeline.ProgressEvent) -> None:
        if ev.phase == "planned":
            self.progress.start()
            self.task = self.progress.add_task("score", total=ev.files_total, rows="0", rate="-")
            return
        rate = f"{ev.rows_done / ev.elapsed_s:,.0f}" if ev.elapsed_s > 0 else "-"
        self.progress.update(self.task, completed=ev.files_done, rows=f"{ev.rows_done:,}/{ev.rows_total:,}", rate=rate)
        if ev.phase == "done":
            self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()




def storage_flag(items: list[str] | None) -> dict[str, str] | None:
    """Repeated ``--storage-option key=value`` as a settings value (None: not given)."""
    return dict(parse_storage_options(items)) if items else None


def storage_options(items: list[str] | None, debug: bool) -> dict[str, Any]:
    """``--storage-option key=value`` flags as fsspec options (a bad one is the one-line error)."""
    return guard(debug, lambda: dict(parse_storage_options(items or [])))

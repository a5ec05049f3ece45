"""What every command shares: the one-line error contract, logging (plain, JSON, or through the
progress bar's console on a terminal), help text that shows defaults and environment variables,
and the progress bar."""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from batchserve.config import parse_storage_options
from batchserve.config.secrets import redact_text
from batchserve.errors import EXIT_USAGE, BatchserveError, ConfigError, Interrupted, exit_code_of
from batchserve.logformat import formatter, one_line, utc_text

if TYPE_CHECKING:
    from rich.console import Console

    from batchserve import pipeline

__all__ = ["fail", "guard", "setup_logging", "columns", "BarProgress", "storage_options", "storage_flag",
           "err_console", "on_terminal", "error_line", "helptext", "LOG_FORMATS", "state", "lazy"]


@functools.cache
def err_console() -> Console:
    """stderr's rich console, built on first use: importing rich.console costs ~0.02 s that
    ``--help`` and an error line do not need."""
    from rich.console import Console

    return Console(stderr=True)


def on_terminal() -> bool:
    """Whether stderr is a terminal as rich decides it, asked of rich only when the environment could
    make it say yes (a tty, or rich's FORCE_TERMINAL/TTY_COMPATIBLE): a cron job's or a pipe's stderr
    needs no rich console at all."""
    if sys.stderr.isatty() or any(k in os.environ for k in ("FORCE_TERMINAL", "TTY_COMPATIBLE")):
        return err_console().is_terminal
    return False


class _LazyModule:
    """A module imported on first attribute access. ``batchserve --help`` and every error found
    before scoring must not pay for Dask, pyarrow and onnxruntime (most of a second)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


def lazy(name: str) -> Any:
    return _LazyModule(name)
T = TypeVar("T")
LOG_FORMATS = ("plain", "json")

#: What the error line and log records need to know about the command in progress.
state: dict[str, Any] = {"format": "plain", "run_id": None, "file_handler": None}


def choices(*values: str) -> Callable[[str], list[str]]:
    """Shell completion for an option that takes one of a few words (``--device <TAB>``). Completion
    only: the value itself is checked where every setting is (flags, environment and job file alike)."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def helptext(text: str, *, default: Any = None, setting: str | None = None) -> str:
    """Help with its default and environment variable, ``[default: ...; env: BATCHSERVE_...]``, as
    Click's plain help prints it (the app sets ``rich_markup_mode=None``: nothing is read as markup)."""
    extra = []
    if default is not None:
        extra.append(f"default: {default}")
    if setting is not None:
        extra.append(f"env: BATCHSERVE_{setting.upper()}")
    return text + (" [" + "; ".join(extra) + "]" if extra else "")


class _RunId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = state["run_id"]
        return True


def _passing_interrupts(handler: logging.Handler) -> logging.Handler:
    """A handler that lets :class:`Interrupted` through. logging swallows any Exception raised while a
    record is emitted (``Handler.handleError``), and SIGTERM is raised as one wherever the main thread
    is: landing inside a log call, it was eaten and the run finished as if never stopped."""
    swallow = handler.handleError

    def handle_error(record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], Interrupted | KeyboardInterrupt):
            raise
        swallow(record)

    handler.handleError = handle_error  # type: ignore[method-assign]
    return handler


class _OneLine(logging.Formatter):
    """The terminal's message, one line whatever the values in it hold (rich draws the time and level)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(redact_text(super().formatMessage(record)))


def setup_logging(debug: bool, quiet: bool, log_format: str = "plain", log_file: str | None = None) -> None:
    """Logs on stderr (through the progress bar's console on a terminal, so lines never garble the
    bar), optionally also appended to ``log_file`` at INFO whatever ``-q`` says (cron: silent mail,
    full log file)."""
    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be plain or json, got {log_format!r}", 2)
    state["format"] = log_format
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler: logging.Handler
    if log_format == "plain" and on_terminal():
        from rich.logging import RichHandler
        from rich.text import Text

        def utc_time(when: dt.datetime) -> Text:  # rich passes local time; logs say UTC everywhere
            return Text(when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

        handler = RichHandler(console=err_console(), show_path=False, log_time_format=utc_time,
                              omit_repeated_times=False, markup=False)
        handler.setFormatter(_OneLine("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
    handler.setLevel(level)
    handlers: list[logging.Handler] = [handler]
    if log_file:
        try:
            file_handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot open --log-file {log_file}: {exc.strerror or exc}", 2)
        file_handler.setFormatter(formatter(log_format))
        file_handler.setLevel(logging.DEBUG if debug else logging.INFO)
        handlers.append(file_handler)
        state["file_handler"] = file_handler
    root = logging.getLogger("batchserve")
    for h in handlers:
        h.addFilter(_RunId())
        _passing_interrupts(h)
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if debug or log_file else level)
    root.propagate = False


def error_line(message: str, code: int) -> str:
    """The one line a failure prints: ``error: ... (run ID)``, or one JSON object with ``--log-format json``;
    a URL's userinfo password is masked in it (cron mails it)."""
    run = state["run_id"]
    message = redact_text(message)
    if state["format"] == "json":
        import time

        return json.dumps({"time": utc_text(time.time()), "level": "error", "run_id": run, "event": event_of(code),
                           "error": message, "exit_code": code})
    return f"error: {one_line(message)}" + (f" (run {run})" if run and f"run {run}" not in message else "")


def event_of(code: int) -> str:
    """What a run's last line calls its end: exit 3 committed every output (drift past the policy is
    the verdict, not a failure), 130/143 were stopped by a signal, the rest failed."""
    from batchserve.errors import DriftError

    if code == DriftError.exit_code:
        return "drifted"
    return "interrupted" if code in (130, 143) else "failed"


def emit_closing(message: str, fields: dict[str, Any]) -> None:
    """A successful run's closing line in ``--log-file`` (plain or JSON), whatever ``-q`` says: a log
    that records only failures cannot tell a good night from a night that never ran."""
    fh = state["file_handler"]
    if fh is None:
        return
    record = logging.LogRecord("batchserve", logging.INFO, __file__, 0, message, None, None)
    record.run_id = state["run_id"]
    record.fields = {"event": "finished", "exit_code": 0, **fields}
    fh.handle(record)


def emit_error(message: str, code: int) -> None:
    """Write the error line to stderr, and to the log file when there is one (cron keeps both)."""
    line = error_line(message, code)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    fh = state["file_handler"]
    if fh is not None:
        record = logging.LogRecord("batchserve", logging.ERROR, __file__, 0, message, None, None)
        record.run_id = state["run_id"]
        record.fields = {"exit_code": code}
        fh.handle(record)


def fail(message: str, code: int = BatchserveError.exit_code) -> NoReturn:
    # One line, no markup interpretation: paths may contain [brackets].
    emit_error(message, code)
    raise typer.Exit(code)


def settings_guard(debug: bool, fn: Callable[[], T]) -> T:
    """Resolve settings (flags, ``BATCHSERVE_*``, the job file): any value batchserve refuses there is a
    usage error, exit 2 like Click's own for a bad flag. A retry cannot fix a bad value, and in the
    shipped DAG exit 1 means two pointless retries."""
    try:
        return fn()
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt as exc:
        fail("interrupted", exit_code_of(exc))


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


def columns(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [c.strip() for c in value.split(",") if c.strip()]


class BarProgress:
    """A rich progress bar for people at a terminal: files, rows, rows/s and time left (from rows)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            TextColumn("{task.fields[files]} files  {task.fields[rows]} rows  {task.fields[rate]} rows/s"),
            TextColumn("time left"),
            TimeRemainingColumn(),
            console=err_console(),
            transient=True,
        )
        self.task: Any = None

    def __call__(self, ev: pipeline.ProgressEvent) -> None:
        if ev.phase == "planned":
            self.progress.start()
            self.task = self.progress.add_task("score", total=max(ev.rows_total, 1), files=f"0/{ev.files_total}",
                                               rows="0", rate="-")
            return
        if self.task is None:
            return
        rate = f"{ev.rows_done / ev.elapsed_s:,.0f}" if ev.elapsed_s > 0 else "-"
        self.progress.update(self.task, completed=ev.rows_done, files=f"{ev.files_done}/{ev.files_total}",
                             rows=f"{ev.rows_done:,}/{ev.rows_total:,}", rate=rate)
        if ev.phase == "done":
            self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()


def storage_flag(items: list[str] | None) -> dict[str, str] | None:
    """Repeated ``--storage-option key=value`` as a settings value (None: not given)."""
    return dict(parse_storage_options(items)) if items else None


def storage_options(items: list[str] | None, debug: bool) -> dict[str, Any]:
    """``--storage-option key=value`` flags as fsspec options (a bad one is the one-line error)."""
    return settings_guard(debug, lambda: dict(parse_storage_options(items or [])))

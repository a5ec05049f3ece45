"""The one exception tree of batchserve.

Every failure a user can fix is a :class:`BatchserveError`: it carries typed
attributes (``path``, ``column``, ``expected``, ``found``) so callers can react
programmatically, and its ``str()`` is the single line the CLI prints::

    >>> str(SchemaError("feature column is missing", path="in/a.parquet", column="amount"))
    "feature column is missing (in/a.parquet, column 'amount')"

Errors are raised on Dask workers and re-raised on the client, so every class
must survive a pickle round trip with its attributes intact; ``__reduce__``
rebuilds from keyword state rather than ``args`` for that reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "BatchserveError",
    "ConfigError",
    "UsageError",
    "InputError",
    "SchemaError",
    "DataError",
    "ModelError",
    "DeviceError",
    "OutputError",
    "WorkerStateError",
    "ClusterError",
    "StorageError",
    "Interrupted",
    "LockedError",
    "DriftError",
    "RequestError",
    "EXIT_OK",
    "EXIT_USAGE",
    "exit_code_of",
    "closest",
    "located",
]

#: Exit codes that belong to no error class: success, and a usage error (Typer/Click's own code).
EXIT_OK = 0
EXIT_USAGE = 2


def _rebuild(cls: type[BatchserveError], message: str, state: dict[str, Any]) -> BatchserveError:
    return cls(message, **state)


class BatchserveError(Exception):
    """Base of every error a user can act on; anything else is a bug."""

    #: Whether retrying the same task could succeed (I/O hiccups yes, bad data no).
    transient: bool = False
    #: The process exit code when this error ends a CLI command: the one table is these attributes.
    exit_code: int = 1
    #: The HTTP status when this error ends a request to ``batchserve serve`` (a bad request is the
    #: caller's to fix: 4xx; anything the server should have prevented: 500).
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.column = column
        self.expected = expected
        self.found = found
        self.hint = hint

    def _state(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "column": self.column,
            "expected": self.expected,
            "found": self.found,
            "hint": self.hint,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._state()))

    def where(self) -> str:
        """The "(file, column)" suffix that tells the user where to look."""
        parts = []
        if self.path:
            parts.append(self.path)
        if self.column:
            parts.append(f"column {self.column!r}")
        return f" ({', '.join(parts)})" if parts else ""

    def __str__(self) -> str:
        text = self.message
        if self.expected is not None or self.found is not None:
            text += f": expected {self.expected}, found {self.found}"
        if self.hint:
            text += f"; {self.hint}"
        # One line, always: the CLI contract promises a single stderr line.
        return (text + self.where()).replace("\n", " ")


class ConfigError(BatchserveError):
    """Options that contradict each other or a job file that does not parse."""


class InputError(BatchserveError):
    """The input cannot be found or listed (wrong path, no Parquet, no access)."""


class SchemaError(BatchserveError):
    """A Parquet file's schema does not fit the features or the other files."""
    http_status = 400


class DataError(BatchserveError):
    """Values that cannot be scored safely: a corrupt file, a lossy cast, nulls in ints."""
    http_status = 400


class ModelError(BatchserveError):
    """The model cannot be found, parsed, or does not fit the features."""


class DeviceError(BatchserveError):
    """The requested execution device is not available (no silent fallback)."""


class OutputError(BatchserveError):
    """The output location is not safe to write (exists, unwritable, inside the input)."""


class UsageError(ConfigError):
    """The command was called wrongly (a required setting missing): exit 2, like any usage error
    Click reports, so a wrapper can tell a broken command line from a run that failed."""

    exit_code = EXIT_USAGE


class WorkerStateError(BatchserveError):
    """A task ran on a worker that lacks the state the pipeline should have installed."""


class ClusterError(BatchserveError):
    """The Dask cluster cannot be reached or lost the work."""

    transient = True


class StorageError(BatchserveError):
    """A read or write against storage failed in a way that may pass (network, 5xx)."""

    transient = True


class LockedError(BatchserveError):
    """Another live run holds the output's lock: two runs must never interleave files."""


class Interrupted(BatchserveError):
    """SIGINT/SIGTERM stopped the run; committed files are kept and recorded. Exits 128 + signal."""

    def __init__(self, message: str = "interrupted", *, signum: int = 2, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.signum = signum
        self.exit_code = 128 + signum

    def _state(self) -> dict[str, object]:
        return {**super()._state(), "signum": self.signum}


class DriftError(BatchserveError):
    """With ``fail_on_drift``: features drifted past the policy. The outputs and ``_SUCCESS`` are
    committed before it is raised; ``result`` holds the run's result (not pickled: client side only)."""

    exit_code = 3

    def __init__(self, message: str, *, result: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.result = result


class RequestError(BatchserveError):
    """A request ``batchserve serve`` refuses: its status says why (400 malformed, 401 unauthenticated,
    404 unknown model or version, 413 too large, 503 queue full); the body is ``{"error": str(exc)}``."""

    def __init__(self, message: str, *, status: int = 400, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.http_status = status

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "status": self.http_status}


def closest(name: str, candidates: Sequence[str], quote: bool = False) -> str:
    """`` (did you mean X?)`` for a likely typo among ``candidates``, else nothing: settings, job-file
    keys, filter keys and column names all say it the same way."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if quote else f" (did you mean {close[0]}?)"


def exit_code_of(exc: BaseException) -> int:
    """The CLI's exit code for an exception: the class's own for ours, 130 for Ctrl-C, else 1."""
    if isinstance(exc, BatchserveError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


@contextlib.contextmanager
def located(path: str, prefix: str = "") -> Iterator[None]:
    """An error of ours raised inside names ``path`` (unless it names a path already), its message
    led by ``prefix``: where a file's or a model's problem is found deeper down than its name is known."""
    try:
        yield
    except BatchserveError as exc:
        exc.path = exc.path or path
        if prefix:
            exc.message = f"{prefix}{exc.message}"
        raise

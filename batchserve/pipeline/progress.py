"""The progress callback's event: its own module, so the CLI and planning need no Dask to name it."""

from __future__ import annotations

import dataclasses

__all__ = ["ProgressEvent"]


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Sent to the progress callback after planning, as rows within files are scored (``batch``, from
    the tasks' reports about twice a second, possibly from another thread), after every committed
    file, and at the end."""

    phase: str  # "planned" | "batch" | "file" | "done"
    files_done: int
    files_total: int
    rows_done: int
    rows_total: int
    elapsed_s: float
    path: str | None = None

"""Request logs as a Parquet dataset that ``batchserve score``, ``profile`` and drift read as they are.

One row per scored row: ``request_id``, ``received_at`` (UTC), ``model_version``, the features as the
feature plan names them (the values the model saw), the predictions as ``score`` writes them, and with
a challenger ``challenger_version`` and its predictions (``challenger_`` before each name). Files land
in ``log_date=YYYY-MM-DD/log_hour=HH/`` folders, one per flush, written under ``_temporary/`` and then moved
into place (io's staged writer, as ``score`` commits), so a reader never sees half a file.

Logging never slows or fails a request: rows wait in a bounded buffer; a writer thread flushes every
``flush_rows`` rows or ``flush_seconds``. A store that fails keeps the rows for the next flush; a store
that fails or hangs long enough fills the buffer, and then the oldest unwritten rows are dropped,
counted (``batchserve_serve_log_dropped_rows_total``) and warned about once a minute. ``close()``
(SIGTERM) flushes what is buffered.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchserve import io
from batchserve.errors import BatchserveError, ConfigError
from batchserve.layout import STAGING_DIR
from batchserve.online.telemetry import Telemetry

__all__ = ["RequestLog", "SAMPLE_KEY", "PARTITION_KEYS", "check_log_columns"]

log = logging.getLogger("batchserve.serve")
#: Parquet footer key recording the share of requests the file's rows were sampled from.
SAMPLE_KEY = b"batchserve.log_sample"
_WARN_EVERY = 60.0
#: The hive keys of the log's folders. Not ``date``/``hour``: hive readers put a folder's key in place of a
#: column of the same name (polars read every logged ``hour`` feature as the hour it was logged; pyarrow
#: refused the dataset), and a feature called ``hour`` is common. A column with one of these names is
#: refused at start-up (:func:`check_log_columns`).
PARTITION_KEYS = ("log_date", "log_hour")
_FOLDER_FORMAT = f"{PARTITION_KEYS[0]}=%Y-%m-%d/{PARTITION_KEYS[1]}=%H"


def check_log_columns(names: list[str]) -> None:
    """The columns a log row will have: each named once, none named as a partition key, or one line."""
    seen: set[str] = set()
    for name in names:
        if name in PARTITION_KEYS:
            raise ConfigError(f"--log-requests: the logged column {name!r} has the name of the log's partition "
                              f"folders ({'=, '.join(PARTITION_KEYS)}=), which hive readers would read in its place; "
                              "rename the feature or output (--features) to log this model")
        if name in seen:
            raise ConfigError(f"--log-requests: two logged columns are named {name!r} (a feature, an output or "
                              "one of request_id, received_at, model_version, challenger_*); one would hide the "
                              "other in the log: rename one (--features) to log this model")
        seen.add(name)


class RequestLog:
    """The bounded buffer and the writer thread in front of one log dataset."""

    def __init__(self, uri: str, storage: Mapping[str, Any], *, sample: float, flush_rows: int,
                 flush_seconds: float, buffer_rows: int, telemetry: Telemetry, model: str) -> None:
        self.uri = uri.rstrip("/")
        self._storage = dict(storage)
        self.sample = sample
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.buffer_rows = buffer_rows
        self._telemetry = telemetry
        self._meta = {SAMPLE_KEY: repr(sample).encode(), b"batchserve.model": model.encode()}
        self._tables: collections.deque[pa.Table] = collections.deque()
        self._rows = 0
        self._oldest: float | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._warned: dict[str, float] = {}  # per kind of warning: a drop must not silence a failure
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="batchserve-request-log", daemon=True)
        self._thread.start()

    # --- the buffer (called from the after-answer thread) ---------------------------------------------

    def add(self, table: pa.Table) -> None:
        """Queue rows for the next file; never blocks on the store."""
        if not table.num_rows:
            return
        with self._cond:
            self._tables.append(table)
            self._rows += table.num_rows
            self._oldest = self._oldest or time.monotonic()
            dropped = self._trim()
            if self._rows >= self.flush_rows:
                self._cond.notify()
        if dropped:
            self._dropped(dropped, "the buffer is full (the log store is slow or failing)")

    def _trim(self) -> int:
        """Drop the oldest rows beyond ``buffer_rows`` (whole tables, then the head of the next)."""
        dropped = 0
        while self._rows > self.buffer_rows and self._tables:
            excess = self._rows - self.buffer_rows
            oldest = self._tables.popleft()
            if oldest.num_rows > excess:
                self._tables.appendleft(oldest.slice(excess))
                cut = excess
            else:
                cut = oldest.num_rows
            self._rows -= cut
            dropped += cut
        return dropped

    def _dropped(self, rows: int, why: str) -> None:
        self._telemetry.log_dropped.inc(rows)
        if self._due_warning("log_dropped"):
            log.warning("request log %s: dropped %d unwritten row(s): %s", self.uri, rows, why,
                        extra={"fields": {"event": "log_dropped", "rows": rows}})

    def _due_warning(self, kind: str) -> bool:
        """At most one warning of each kind a minute: a failing store must not flood the logs."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) < _WARN_EVERY:
            return False
        self._warned[kind] = now
        return True

    # --- the writer thread ----------------------------------------------------------------------------

    def _take(self) -> list[pa.Table]:
        out: list[pa.Table] = []
        rows = 0
        while self._tables and rows < self.flush_rows:
            t = self._tables.popleft()
            rows += t.num_rows
            out.append(t)
        self._rows -= rows
        self._oldest = time.monotonic() if self._tables else None
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._due():
                    self._cond.wait(self._wait_seconds())
                if self._closing and not self._tables:
                    return
                tables = self._take()
            if tables and not self._write_or_keep(tables) and self._closing:
                return  # stopping, and the store refuses: close() counts what is left as dropped
            if self._closing:
                with self._cond:
                    if not self._tables:
                        return

    def _due(self) -> bool:
        if self._rows >= self.flush_rows:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds

    def _wait_seconds(self) -> float:
        if self._oldest is None:
            return self.flush_seconds
        return max(0.01, self.flush_seconds - (time.monotonic() - self._oldest))

    def _write_or_keep(self, tables: list[pa.Table]) -> bool:
        try:
            self.write(pa.concat_tables(tables, promote_options="default"))
            return True
        except Exception as exc:  # noqa: BLE001 - any store failure: keep the rows, never crash the server
            reason = str(exc) if isinstance(exc, BatchserveError) else f"{type(exc).__name__}: {exc}"
            with self._cond:
                for t in reversed(tables):
                    self._tables.appendleft(t)
                    self._rows += t.num_rows
                self._oldest = time.monotonic()
                dropped = self._trim()
            self._telemetry.log_failures.inc()
            if self._due_warning("log_failed"):
                log.warning("request log %s: cannot write (%s); the rows wait for the next flush", self.uri,
                            " ".join(reason.split())[:300], extra={"fields": {"event": "log_failed"}})
            if dropped:
                self._dropped(dropped, "the buffer is full (the log store is slow or failing)")
            if not self._closing:
                time.sleep(min(self.flush_seconds, 1.0))  # not a hot loop against a failing store
            return False

    def write(self, table: pa.Table) -> None:
        """One file per (date, hour) of ``received_at`` in ``table``, each staged then moved into place."""
        hours = pc.strftime(table.column("received_at"), format=_FOLDER_FORMAT)
        for folder in pc.unique(hours).to_pylist():
            part = table.filter(pc.equal(hours, folder))
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            # Unique across replicas and processes writing one dataset: never another's file replaced.
            name = f"part-{stamp}-{uuid.uuid4().hex[:16]}-{next(self._seq):06d}.parquet"
            final = io.join_url(self.uri, folder, name)
            staging = io.join_url(self.uri, STAGING_DIR, f"{uuid.uuid4().hex}-{name}")
            schema = part.schema.with_metadata(self._meta)
            with io.StagedWriter(final, staging, schema, self._storage) as writer:
                for batch in part.cast(schema).to_batches():
                    writer.write(batch)
                writer.commit()
            self._telemetry.log_rows.inc(part.num_rows)
            self._telemetry.log_files.inc()

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is buffered (SIGTERM), waiting at most ``timeout`` for the store."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left = self._rows
        if self._thread.is_alive() or left:
            self._dropped(left, "the server stopped before the store took them")

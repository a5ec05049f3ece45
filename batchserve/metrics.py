"""Prometheus metrics of a run, after success and after failure: a text file for node_exporter's
textfile collector (``--metrics-file``) and a push to a Pushgateway (``--pushgateway``).

A nightly job is not scraped while it runs, so the run's outcome is what gets exported, once, at
the end: rows, files, failed files, seconds, rows/s, drifted features and drift share, the exit
code, and the time of the last success. The last success survives a failure: the file keeps the
earlier sample, and the push uses POST (``pushadd``), which replaces only the metrics pushed, so
an alert on ``time() - batchserve_last_success_timestamp_seconds`` fires when nights fail.

Labels are the same on success and failure and the same night after night, so one job is one
series: ``batchserve_job`` (``--metrics-job``; default the job file's name, else the output without
its trailing ``key=value`` folders: ``scored/date=2026-11-05`` is job ``scored``), ``model`` as the
user named it (``models/fraud@production``, never the resolved path) and ``model_alias``. The
version is a value (``batchserve_run_model_version``), not a label: a label that changes with every
promotion starts a new series each time. In the file ``batchserve_job`` is a label (several jobs may
share one textfile folder, and the collector rejects duplicate series); the push carries it in its
grouping key instead, so a Pushgateway holds one group per job, not one per night.

prometheus_client writes the exposition format and does the atomic write (temp file, rename).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from batchserve.manifest import Manifest

__all__ = ["RunOutcome", "build_registry", "write_metrics_file", "push_metrics", "default_job", "PUSH_JOB"]

log = logging.getLogger("batchserve")

PUSH_JOB = "batchserve"
LAST_SUCCESS = "batchserve_last_success_timestamp_seconds"
#: A Pushgateway that does not answer must not hold a nightly job: the run's result stands. This bounds
#: each socket operation; one that trickles a byte at a time is bounded by the push's overall deadline.
PUSH_TIMEOUT_S = 10.0
#: The push's overall deadline when none is given (``--push-timeout``).
PUSH_DEADLINE_S = 15.0


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a run's metrics are made of: its exit code and, when one was written, its manifest."""

    output: str
    model: str
    exit_code: int
    #: The job's stable name (``--metrics-job``), the one label that tells jobs apart.
    job: str
    run_id: str
    seconds: float
    manifest: Manifest | None = None
    finished_at: float = dataclasses.field(default_factory=time.time)

    @property
    def succeeded(self) -> bool:
        """Scored and committed: exit 0, or exit 3 (drift past the threshold, outputs committed)."""
        return self.exit_code in (0, 3) and self.manifest is not None and self.manifest.run.status == "succeeded"

    def labels(self) -> dict[str, str]:
        """The model as the user named it, whether the run got as far as resolving it or not."""
        base, _, tail = self.model.rpartition("@")
        alias = tail if base and not tail.isdigit() and "/" not in tail else ""
        return {"model": base if alias else self.model, "model_alias": alias}


def default_job(output: str, job_file: str | None) -> str:
    """``--metrics-job``'s default: the job file's name, else the output without trailing hive folders."""
    if job_file:
        return os.path.splitext(os.path.basename(job_file.rstrip("/")))[0] or "batchserve"
    parts = output.rstrip("/").split("/")
    while len(parts) > 1 and "=" in parts[-1] and ":" not in parts[-1]:
        parts.pop()
    return "/".join(parts) or "batchserve"


def build_registry(outcome: RunOutcome, *, job_label: bool) -> CollectorRegistry:
    """The run's metrics in a fresh registry (never the process-global one)."""
    reg = CollectorRegistry()
    labels = outcome.labels()
    if job_label:
        labels = {"batchserve_job": outcome.job, **labels}
    names = list(labels)

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        Gauge(name, doc, names, registry=reg).labels(**labels).set(value)

    m = outcome.manifest
    t = m.totals if m is not None else None
    gauge("batchserve_run_exit_code", "Exit code of the last run (0 ok, 1 failed, 3 drift, 130/143 interrupted).",
          outcome.exit_code)
    gauge("batchserve_run_timestamp_seconds", "When the last run ended (Unix time).", outcome.finished_at)
    gauge("batchserve_run_duration_seconds", "Wall time of the last run.",
          t.seconds if t is not None else outcome.seconds)
    version = m.model.version if m is not None else None
    if version is not None and version.isdigit():
        gauge("batchserve_run_model_version", "The model version the last run scored with (a repository's "
              "version number; a change marks a promotion or rollback).", int(version))
    if t is not None and m is not None:
        gauge("batchserve_run_rows", "Rows scored by the last run (committed files only on failure).", t.rows)
        gauge("batchserve_run_files", "Files scored by the last run.", t.files)
        gauge("batchserve_run_failed_files", "Input files the last run could not score.", len(m.failures))
        gauge("batchserve_run_rows_per_second", "Throughput of the last run.", t.rows_per_second)
        d = m.drift
        if d is not None and d.reference is not None and d.features:
            gauge("batchserve_run_drifted_features", "Features past their drift threshold.", len(d.drifted_features))
            gauge("batchserve_run_drift_share", "Share of features past their drift threshold.",
                  len(d.drifted_features) / len(d.features))
        if d is not None and d.reference is not None and d.predictions:
            gauge("batchserve_run_drifted_predictions", "Prediction columns past their drift threshold (a bad "
                  "model shows here while every feature is steady).", len(d.drifted_predictions))
    if outcome.succeeded:
        gauge(LAST_SUCCESS, "When a run last succeeded (Unix time).", outcome.finished_at)
    return reg


def write_metrics_file(path: str, outcome: RunOutcome) -> None:
    """Write the text file atomically; after a failure the earlier last-success sample is kept."""
    reg = build_registry(outcome, job_label=True)
    if not outcome.succeeded:
        previous = _previous_last_success(path)
        if previous is not None:  # the value carries over, under this run's labels (one label set)
            labels = {"batchserve_job": outcome.job, **outcome.labels()}
            Gauge(LAST_SUCCESS, "When a run last succeeded (Unix time).", list(labels), registry=reg).labels(
                **labels).set(previous[1])
    write_to_textfile(path, reg)


def _previous_last_success(path: str) -> tuple[dict[str, str], float] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return dict(sample.labels), float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # no earlier file, or one we cannot read: nothing to carry over
    return None


def push_metrics(url: str, outcome: RunOutcome, deadline_s: float = PUSH_DEADLINE_S) -> str | None:
    """Push to a Pushgateway; returns why it failed (the caller warns once) or None.

    Grouping: job ``batchserve``, ``batchserve_job`` = the job's stable name, so one job is one group
    night after night (a dated output made a new group every night, never removed), and one job's
    push never replaces another's.
    """
    reg = build_registry(outcome, job_label=False)
    result: list[str | None] = []

    target, handler = _with_basic_auth(url)

    def push() -> None:
        try:
            pushadd_to_gateway(target, job=PUSH_JOB, registry=reg, grouping_key={"batchserve_job": outcome.job},
                               timeout=min(PUSH_TIMEOUT_S, deadline_s), handler=handler)
            result.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure to push is a warning, never the run's failure
            reason = getattr(exc, "reason", None) or exc
            result.append(f"{type(exc).__name__}: {' '.join(str(reason).split())[:200]}")

    # One overall deadline: urllib's timeout is per socket operation, so a gateway sending a byte every
    # few seconds held a finished run for minutes. The thread is a daemon: abandoned, it ends with us.
    worker = threading.Thread(target=push, name="batchserve-push", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive() or not result:
        return f"no complete answer within {deadline_s:g} s (--push-timeout); the push was abandoned"
    return result[0]


def _with_basic_auth(url: str) -> tuple[str, Any]:
    """``http://user:password@gateway:9091``: the URL without its userinfo, and prometheus_client's basic
    auth handler carrying it (urllib sends no credentials from a URL by itself)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is None:
        return url, default_handler
    user, password = unquote(parts.username), unquote(parts.password or "")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
                ) -> Any:
        return basic_auth_handler(url, method, timeout, headers, data, user, password)

    return urlunsplit(parts._replace(netloc=netloc)), handler


def check_metrics_path(path: str) -> str | None:
    """Why the metrics file cannot be written (checked before scoring), or None."""
    if "://" in path:
        return "--metrics-file must be a local path (node_exporter's textfile collector reads local files)"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--metrics-file folder does not exist: {folder}"
    if not os.access(folder, os.W_OK):
        return f"--metrics-file folder is not writable: {folder}"
    if os.path.isdir(path):
        return f"--metrics-file is a folder; name the .prom file: {path}"
    return None

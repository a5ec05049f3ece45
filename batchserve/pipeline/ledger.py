"""The output's record of every run: ``_runs/<run_id>.json`` (the run's manifest, kept for good) and
``_runs/<run_id>.stats.json`` (each current output's own drift summaries, keyed by its checksum).

Why a ledger and not one ``_manifest.json``: one output holds many runs' work (a partition a night,
re-runs, a rollback), and each run replaces ``_manifest.json``. The night of the bad model and the
night after the rollback must both stay listable and diffable (``batchserve runs``, ``diff``), and a
``--resume`` or a filtered re-run must find what an earlier run committed even when a later run of
another partition wrote ``_manifest.json`` since. ``--overwrite`` never removes the ledger (it only
replaces batchserve's data files in its scope).

Why the statistics sidecar: the drift sketches are mergeable, so a re-run that keeps files it does not
rescore can still measure drift over every current output, and give the same verdict (and exit code)
as the run that scored them. The sidecar is keyed by relpath and the committed file's checksum, so a
summary is only carried forward for the very bytes it describes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchserve import drift, io, layout, manifest
from batchserve.errors import BatchserveError
from batchserve.layout import RUNS_DIR

if TYPE_CHECKING:
    from batchserve.worker import Receipt

__all__ = ["RUNS_DIR", "record_url", "stats_url", "write_record", "run_ids", "load_record", "earlier_runs",
           "file_stats", "carried_stats", "StatsByFile", "Carried"]

log = logging.getLogger("batchserve")

#: relpath -> (checksum of the committed output, its column summaries).
StatsByFile = dict[str, tuple[str | None, dict[str, drift.ColumnSummary]]]
#: The same, read-only: the statistics a run carries forward for the files it reused.
Carried = Mapping[str, tuple[str | None, dict[str, drift.ColumnSummary]]]

STATS_SCHEMA = "batchserve.run-file-stats"


def record_url(output: str, run_id: str) -> str:
    return io.join_url(output, RUNS_DIR, f"{run_id}.json")


def stats_url(output: str, run_id: str) -> str:
    return io.join_url(output, RUNS_DIR, f"{run_id}.stats.json")


def file_stats(receipts: Sequence[Receipt], carried: Carried) -> StatsByFile:
    """Every current output's summaries: those scored now (a split file's merged receipt carries its
    pieces' statistics merged) and those carried forward for files this run reused."""
    out: StatsByFile = dict(carried)
    out.update({r.relpath: (r.checksum, dict(r.stats)) for r in receipts if r.stats is not None})
    return out


def write_record(output: str, m: manifest.Manifest, stats: StatsByFile | None, storage: Mapping[str, Any]) -> None:
    """Keep this run's manifest (and its outputs' statistics) in the ledger; written before ``_SUCCESS``."""
    if stats is not None:
        body = {"schema": STATS_SCHEMA, "schema_version": 1, "run_id": m.run.id,
                "files": {rel: {"checksum": checksum, "columns": {n: s.to_dict() for n, s in cols.items()}}
                          for rel, (checksum, cols) in sorted(stats.items())}}
        io.write_text_atomic(stats_url(output, m.run.id), json.dumps(body, separators=(",", ":")), storage)
    io.write_text_atomic(record_url(output, m.run.id), manifest.dumps(m), storage)


def run_ids(output: str, storage: Mapping[str, Any]) -> list[str]:
    """The run ids the ledger holds, newest first (run ids start with their UTC start time)."""
    return layout.record_ids(io.list_dir(io.join_url(output, RUNS_DIR), storage))[::-1]


def load_record(output: str, run_id: str, storage: Mapping[str, Any]) -> manifest.Manifest:
    url = record_url(output, run_id)
    return manifest.loads(io.read_text(url, storage), source=url)


def earlier_runs(output: str, latest: manifest.Manifest | None, storage: Mapping[str, Any],
                 wanted: Iterable[str]) -> list[manifest.Manifest]:
    """The runs that may have committed ``wanted`` outputs, newest first: the output's latest manifest
    (a killed run's journal included), then the ledger's records, read only until every wanted relpath
    has been found (a nightly re-run of one day reads one or two records, not a year of them)."""
    missing = set(wanted)
    found: list[manifest.Manifest] = []
    seen: set[str] = set()
    if latest is not None:
        found.append(latest)
        seen.add(latest.run.id)
        missing -= {e.relpath for e in latest.outputs}
    if not missing:
        return found
    for run_id in run_ids(output, storage):
        if run_id in seen:
            continue
        try:
            m = load_record(output, run_id, storage)
        except BatchserveError as exc:
            log.warning("ignoring an unreadable run record in the output's ledger: %s", exc)
            continue
        found.append(m)
        missing -= {e.relpath for e in m.outputs}
        if not missing:
            break
    return found


def carried_stats(output: str, reused: Sequence[manifest.FileEntry], sources: Mapping[str, str],
                  storage: Mapping[str, Any]) -> StatsByFile:
    """The summaries of the files a run reuses, from the sidecar of the run whose record listed them
    (``sources``: relpath -> run id), each only when its recorded checksum is the reused file's. A file
    without one (its run predates the ledger, or was killed before writing it) is not carried; the
    drift section's coverage then says how many files the statistics cover."""
    by_run: dict[str, list[manifest.FileEntry]] = {}
    for e in reused:
        by_run.setdefault(sources.get(e.relpath, ""), []).append(e)
    out: StatsByFile = {}
    for run_id, entries in by_run.items():
        url = stats_url(output, run_id)
        if not run_id or not io.exists(url, storage):
            continue
        try:
            files = json.loads(io.read_text(url, storage)).get("files", {})
            for e in entries:
                item = files.get(e.relpath)
                if item is None or item.get("checksum") != e.checksum:
                    continue
                out[e.relpath] = (e.checksum, {n: drift.ColumnSummary.from_dict(d) for n, d in item["columns"].items()})
        except (ValueError, KeyError, TypeError, AttributeError, BatchserveError) as exc:
            log.warning("ignoring unreadable statistics of run %s (%s): %s", run_id, url, exc)
    return out

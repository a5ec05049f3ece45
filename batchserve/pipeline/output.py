"""The output folder's side of the commit protocol: what may be written there, the lock, the
journal, which earlier files are ours to replace, and the client's last check before ``_SUCCESS``.

``--overwrite`` and ``--resume`` only ever replace or remove batchserve's own files: outputs the
earlier manifest lists or whose Parquet footer carries a run id, the markers and the staging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import posixpath
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from batchserve import io, layout, manifest, selection
from batchserve.config import TIMESTAMP_FORMAT, ScoreConfig, utc_now
from batchserve.errors import BatchserveError, LockedError, OutputError
from batchserve.layout import LOCK_NAME, MANIFEST_NAME, SUCCESS_NAME
from batchserve.pipeline.plan import RunPlan

__all__ = [
    "check_challenger_location",
    "MANIFEST_NAME", "SUCCESS_NAME", "LOCK_NAME", "JOURNAL_SECONDS", "STALE_LOCK_HOURS", "OutputSurvey",
    "check_output_location", "check_output", "survey_output", "owners", "stale_outputs", "remove_stale_outputs",
    "verify_outputs",
    "output_lock", "lock_is_live", "check_profile_output", "Journal", "run_scope", "Stamp", "stamps",
]

log = logging.getLogger("batchserve")


#: The running manifest is rewritten at most this often while files commit.
JOURNAL_SECONDS = 2.0
#: The most of a run's time the journal may take (see :class:`Journal`).
JOURNAL_SHARE = 0.05


#: A lock from another host older than this is taken over (same host: checked by pid).
STALE_LOCK_HOURS = 24


_MARKERS = frozenset({MANIFEST_NAME, SUCCESS_NAME, LOCK_NAME})


@dataclasses.dataclass(frozen=True)
class OutputSurvey:
    """What the output held before this run: which files a batchserve run wrote, from one listing."""

    #: The earlier run's manifest, when there is a readable one.
    previous: manifest.Manifest | None = None
    #: Data files an earlier batchserve run wrote (listed in its manifest or stamped in their footer),
    #: inside this run's scope: the only files --overwrite and --resume may replace or remove.
    ours: frozenset[str] = frozenset()
    #: The files outside this run's scope (other partitions' outputs, other runs' records): never touched.
    scope: selection.Scope = dataclasses.field(default_factory=selection.Scope)
    #: Files in the scope a batchserve run stamped but no manifest lists (committed after a SIGKILLed run's
    #: last journal write), with their footer's record: --resume can keep them.
    stamps: Mapping[str, Stamp] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What a committed output's footer says about itself."""

    run_id: str
    rows: int
    #: The run's fingerprint and the input's size and version (None: written before batchserve stamped it).
    record: Mapping[str, Any] | None


def run_scope(cfg: ScoreConfig) -> selection.Scope:
    """What this run owns in its output: everything, or the partitions its ``--filter``s select."""
    return selection.Scope.of(cfg.filter, cfg.output)


def is_content(rel: str) -> bool:
    return rel not in _MARKERS and not rel.startswith(io.STAGING_DIR + "/")


def check_output_location(cfg: ScoreConfig, plan: RunPlan) -> None:
    """Input and output must not overlap in either direction, checked before anything is touched.

    Output inside the input: its files would be read back as input next run. Input inside the
    output: ``--overwrite`` would delete it. Both are checked for folders, files and globs, and
    for every input file's real location (a symbolic link may point into the output).
    """
    io.check_output_root(cfg.output, cfg.storage)
    io.output_entries(cfg.output, cfg.storage)  # raises when a file sits where the folder should be
    clash = io.locations_overlap(cfg.output, cfg.input, cfg.storage) or any(
        io.same_location_or_inside(p.url, cfg.output, cfg.storage) for p in plan.partitions
    )
    if clash:
        raise OutputError(
            "input and output overlap (one lies inside the other); the output must be a separate folder, "
            "or scoring would read its own files or --overwrite would delete the input",
            path=cfg.output,
        )


def check_challenger_location(cfg: ScoreConfig, plan: RunPlan) -> None:
    """The challenger's output must overlap neither the input nor the champion's output."""
    if cfg.challenger_output is None:
        return
    check_output_location(ScoreConfig(model="", input=cfg.input, output=cfg.challenger_output,
                                      storage_options=cfg.storage_options), plan)
    if io.locations_overlap(cfg.output, cfg.challenger_output, cfg.storage):
        raise OutputError("--challenger-output overlaps --output; give the challenger its own folder",
                          path=cfg.challenger_output)


def survey_output(cfg: ScoreConfig) -> OutputSurvey:
    """Refuse an output holding files in this run's scope without --overwrite/--resume, and foreign
    Parquet files in the scope with them. Files outside the scope (another day's partition) are never
    counted, refused or touched: appending a partition to one output needs neither flag."""
    storage = cfg.storage
    scope = run_scope(cfg)
    entries = io.output_files(cfg.output, storage)
    content = [rel for rel in layout.content(entries) if scope.owns(rel)]
    _refuse_nested_outputs(cfg, content)
    if content and not (cfg.overwrite or cfg.resume):
        raise layout.not_empty_error(len(content), cfg.output, scope=" and ".join(cfg.filter))
    if not content:
        return OutputSurvey(scope=scope)
    previous = _previous_manifest(cfg, MANIFEST_NAME in entries)
    listed = {e.relpath for e in previous.outputs if scope.owns(e.relpath)} if previous else set()
    unknown = [rel for rel in content if is_content(rel) and rel not in listed and rel.endswith(".parquet")
               and not io.is_hidden(rel)]
    found = stamps(cfg, unknown)
    stamped = {rel: s for rel, s in found.items() if s is not None}
    foreign = [rel for rel in unknown if found[rel] is None]
    if foreign:
        raise OutputError(
            f"output holds {len(foreign)} Parquet file(s) that no batchserve run wrote (e.g. {foreign[0]}); "
            "--overwrite and --resume only replace batchserve's own files: move them away or choose another output",
            path=cfg.output,
        )
    return OutputSurvey(previous, frozenset(listed | set(stamped)), scope, stamped)


def _refuse_nested_outputs(cfg: ScoreConfig, content: list[str]) -> None:
    """Another output inside this run's scope (its markers in a subfolder) is never ours to count, replace or
    remove: its manifest owns its files. A live run writing there is a :class:`LockedError` (as a live lock
    above this output already is); a finished or dead one is refused, naming it, before anything is touched."""
    nested = layout.nested_outputs(content)
    if not nested:
        return
    for rel in content:
        if posixpath.basename(rel) != LOCK_NAME or "/" not in rel:
            continue
        other = _read_lock(io.join_url(cfg.output, rel), cfg.storage)
        if lock_is_live(other):
            raise LockedError(
                f"another batchserve run is writing {posixpath.dirname(rel)}/ inside this output (run "
                f"{other.get('run_id')}, pid {other.get('pid')} on {other.get('host')}); wait for it, or write "
                "this output elsewhere", path=cfg.output)
    raise OutputError(
        f"output holds another batchserve output, {nested[0]}/ (its own {MANIFEST_NAME} or {SUCCESS_NAME}), inside "
        "this run's scope; its manifest owns those files, so no run may replace or remove them: write to a folder "
        "beside it, or move it out first", path=cfg.output)


def _previous_manifest(cfg: ScoreConfig, present: bool) -> manifest.Manifest | None:
    if not present:
        return None
    url = io.join_url(cfg.output, MANIFEST_NAME)
    try:
        return manifest.loads(io.read_text(url, cfg.storage), source=url)
    except BatchserveError as exc:
        if cfg.resume:
            raise
        log.warning("ignoring the unreadable earlier manifest (%s); only files stamped by batchserve are replaced",
                    exc)
        return None


def stamps(cfg: ScoreConfig, rels: list[str]) -> dict[str, Stamp | None]:
    """What each file's footer says of the run that wrote it (None: foreign, or unreadable)."""
    urls = [io.join_url(cfg.output, rel) for rel in rels]
    footers = io.read_footers(urls, cfg.storage, retries=cfg.retries, keep_errors=True)
    out: dict[str, Stamp | None] = {}
    for rel, footer in zip(rels, footers, strict=True):
        if not isinstance(footer, io.Footer):
            out[rel] = None
            continue
        meta = footer.schema.metadata or {}
        owner, raw = meta.get(io.OWNER_KEY), meta.get(io.RECORD_KEY)
        try:
            record = json.loads(raw) if raw is not None else None
        except ValueError:
            record = None
        out[rel] = None if owner is None else Stamp(owner.decode("utf-8", "replace"), footer.num_rows,
                                                      record if isinstance(record, dict) else None)
    return out


def owners(cfg: ScoreConfig, rels: list[str]) -> dict[str, str | None]:
    """The run id stamped in each file's footer (None: foreign, or unreadable)."""
    return {rel: (s.run_id if s is not None else None) for rel, s in stamps(cfg, rels).items()}


def check_output(cfg: ScoreConfig) -> OutputSurvey:
    survey = survey_output(cfg)
    io.prepare_output(cfg.output, cfg.storage)
    return survey


def stale_outputs(survey: OutputSurvey, outputs: Iterable[str]) -> list[str]:
    """Files an earlier batchserve run wrote inside this run's scope that this run's outputs do not
    include (their input was deleted since, or the layout changed); foreign files and files outside
    the scope are never among them."""
    return sorted(rel for rel in survey.ours - set(outputs) if survey.scope.owns(rel))


def remove_stale_outputs(cfg: ScoreConfig, stale: list[str]) -> None:
    """Remove them, each named at WARNING: a removal is never a surprise in a cron log (``-q`` too)."""
    for rel in stale:
        io.remove(io.join_url(cfg.output, rel), cfg.storage)
        log.warning("removed %s: written by an earlier run inside this run's scope, and its input is gone", rel,
                    extra={"fields": {"event": "removed_output", "file": rel}})


def verify_outputs(cfg: ScoreConfig, outputs: list[manifest.FileEntry], survey: OutputSurvey) -> str | None:
    """From the client's side, in one listing: every output the manifest lists is there with its
    size, and no other data file is in the run's scope. Workers that resolve paths differently
    (another working directory, another machine's disk) would otherwise leave ``_SUCCESS`` over
    missing files. Files outside the scope belong to other runs' records (``_runs/``)."""
    found = io.output_files(cfg.output, cfg.storage)
    for e in outputs:
        if found.get(e.relpath) != e.bytes:
            what = "missing" if e.relpath not in found else f"{found[e.relpath]} bytes, not {e.bytes}"
            return (f"committed file {e.relpath} is {what} in the output as this client sees it; workers may "
                    "see another filesystem (use absolute paths on storage every worker and the client share)")
    listed = {e.relpath for e in outputs}
    extra = sorted(rel for rel in found if rel.endswith(".parquet") and is_content(rel) and not io.is_hidden(rel)
                   and rel not in listed and survey.scope.owns(rel))
    if extra:
        return f"the output holds {len(extra)} data file(s) this run did not write (e.g. {extra[0]})"
    return None


def check_profile_output(cfg: ScoreConfig) -> None:
    """The profile is one JSON file: a folder there (or a path inside the input) is refused up front."""
    if io.isdir(cfg.output, cfg.storage):
        raise OutputError("profile output is a folder; give a file name such as reference.json", path=cfg.output)
    if io.same_location_or_inside(cfg.output, cfg.input, cfg.storage):
        raise OutputError("profile output is inside the input; write it elsewhere", path=cfg.output)


@contextmanager
def output_lock(cfg: ScoreConfig, run_id: str) -> Iterator[None]:
    """Refuse a second live run into the same output; take over a stale lock."""
    storage = cfg.storage
    _refuse_inside_a_locked_output(cfg)
    url = io.join_url(cfg.output, LOCK_NAME)
    me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
          "user": getpass.getuser(), "started_at": utc_now()}
    if io.exists(url, storage):
        other = _read_lock(url, storage)
        if lock_is_live(other):
            raise LockedError(
                f"another batchserve run is writing this output (run {other.get('run_id')}, pid "
                f"{other.get('pid')} on {other.get('host')}, since {other.get('started_at')}); wait for it, "
                "or delete the lock file if that run is dead",
                path=url,
            )
        log.warning("taking over a stale lock from run %s (pid %s on %s)", other.get("run_id"), other.get("pid"),
                    other.get("host"))
        io.remove(url, storage)
    try:
        atomic = io.create_exclusive(url, json.dumps(me), storage)
    except FileExistsError:
        raise LockedError(
            "another batchserve run took this output's lock at the same moment; wait for it to finish",
            path=url,
        ) from None
    if not atomic:
        log.warning("this store offers no conditional create: the output lock is best effort, and two runs "
                    "started at the same moment could both take it (%s)", url)
    try:
        yield
    finally:
        if _read_lock(url, storage).get("run_id") == run_id:
            with contextlib.suppress(BatchserveError):
                io.remove(url, storage)


def _parents(url: str) -> Iterator[str]:
    """The folders enclosing ``url``, innermost first, up to the bucket or the file system's root."""
    scheme, sep, rest = url.rstrip("/").rpartition("://")
    head = f"{scheme}{sep}"
    parts = rest.split("/")
    for i in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:i])
        if parent:
            yield head + parent


def _refuse_inside_a_locked_output(cfg: ScoreConfig) -> None:
    """An output inside an output another live run holds is refused (as an output containing the input
    is): that run's listing would count this run's files, and its _SUCCESS would cover them unlisted."""
    for parent in _parents(cfg.output):
        lock = io.join_url(parent, LOCK_NAME)
        if not io.exists(lock, cfg.storage):
            continue
        other = _read_lock(lock, cfg.storage)
        if lock_is_live(other):
            raise LockedError(
                f"the output lies inside {parent}, which another batchserve run is writing (run {other.get('run_id')}, "
                f"pid {other.get('pid')} on {other.get('host')}); write outside it, or wait for that run",
                path=cfg.output,
            )


def _read_lock(url: str, storage: Mapping[str, Any]) -> dict[str, Any]:
    """A lock file's content; ``{}`` when it cannot be read or is not a JSON object (a dead or foreign
    lock, which :func:`lock_is_live` calls not live)."""
    try:
        other = json.loads(io.read_text(url, storage))
    except (ValueError, BatchserveError):
        return {}
    return other if isinstance(other, dict) else {}


def lock_is_live(lock: Mapping[str, Any]) -> bool:
    if lock.get("host") == socket.gethostname():
        pid = lock.get("pid")
        if not isinstance(pid, int):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        started = dt.datetime.strptime(str(lock.get("started_at")), TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return False
    return dt.datetime.now(dt.UTC) - started < dt.timedelta(hours=STALE_LOCK_HOURS)


class Journal:
    """The ``running`` manifest, rewritten while files commit so a SIGKILLed run still says what it
    committed (``--resume`` reads it): at most every :data:`JOURNAL_SECONDS`, and never more than
    about :data:`JOURNAL_SHARE` of the run's time. A manifest of thousands of files takes a good
    fraction of a second to build and write; rewritten every 2 s it cost a third of a run of 2,000
    small files (profiled), so the interval grows with what a write costs."""

    def __init__(self, url: str, storage: Mapping[str, Any], snapshot: Callable[[str], manifest.Manifest]) -> None:
        self.url = url
        self._storage = storage
        self._snapshot = snapshot
        self._last = 0.0
        self._cost = 0.0

    def tick(self, force: bool = False) -> None:
        interval = max(JOURNAL_SECONDS, self._cost / JOURNAL_SHARE)
        if force or time.monotonic() - self._last >= interval:
            t0 = time.monotonic()
            self.write(self._snapshot("running"))
            self._last = time.monotonic()
            self._cost = self._last - t0

    def write(self, m: manifest.Manifest) -> None:
        io.write_text_atomic(self.url, manifest.dumps(m), self._storage)


"""Run history from manifests alone: which runs an output holds (``runs``) and what changed
between two of them (``diff``). No database: the manifests are the record, wherever they live.

Both return plain rows for the CLI and polars DataFrames for analysts (``batchserve.runs(...)``
in a notebook filters and sorts like any table); polars is imported only when a frame is asked for.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchserve import io, layout, manifest
from batchserve.errors import InputError
from batchserve.layout import MANIFEST_NAME, RUNS_DIR

if TYPE_CHECKING:
    import polars as pl

__all__ = ["RunRow", "FileRow", "Change", "find_manifests", "load_runs", "run_rows", "runs_frame", "file_rows",
           "files_frame", "diff", "diff_frame", "runs", "files", "diff_runs", "run_id_url", "MANIFEST_NAME"]


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run, as ``batchserve runs`` prints it."""

    output: str
    run_id: str
    status: str
    started_at: str
    model: str
    model_version: str | None
    files: int
    rows: int
    seconds: float
    rows_per_second: float
    failed_files: int
    #: None when the run had no reference to measure drift against.
    drifted_features: int | None
    features: int | None
    drifted: tuple[str, ...]
    #: Prediction columns past their limit (a bad model shows here, whatever its features did).
    drifted_predictions: tuple[str, ...] = ()
    predictions: int | None = None
    #: What the run owned (its --filter texts; empty: the whole output).
    scope: tuple[str, ...] = ()
    #: Whether some output of this run is still the current one (no later run replaced it).
    current: bool = True
    #: The alias move that chose the model (``production: 2 -> 1 by ops, rollback``), if named by alias.
    alias_event: str | None = None


@dataclasses.dataclass(frozen=True)
class FileRow:
    """One input file of a run and what became of it: ``scored``, ``reused`` (kept by --resume),
    ``failed`` (skipped under --on-error skip, the error in ``note``) or ``not scored`` (the run
    stopped first)."""

    output: str
    run_id: str
    relpath: str
    status: str
    input_path: str
    input_bytes: int
    #: Rows the input's footer declared; ``output_rows`` is what was written.
    input_rows: int
    output_path: str | None
    output_rows: int | None
    output_bytes: int | None
    checksum: str | None
    note: str | None


@dataclasses.dataclass(frozen=True)
class Change:
    """One difference between two runs: ``section`` (model, config, inputs, rows, timings, drift),
    what, before and after."""

    section: str
    item: str
    before: str
    after: str


def find_manifests(locations: Sequence[str], storage: Mapping[str, Any]) -> list[str]:
    """Manifest URLs for each location: a ``_manifest.json``, an output folder (every run its ledger
    ``_runs/`` keeps, and its latest manifest when that run has no record, a killed run's journal), or
    a folder whose subfolders are outputs (``out/`` holding ``date=*/``). A location with none is an
    error naming it."""
    found: list[str] = []
    for loc in locations:
        if loc.rstrip("/").endswith(MANIFEST_NAME) or (io.exists(loc, storage) and not io.isdir(loc, storage)):
            if not io.exists(loc, storage):
                raise InputError("manifest not found", path=loc)
            found.append(loc)
            continue
        if not io.isdir(loc, storage):
            raise InputError("no such output folder or manifest", path=loc)
        here = _output_runs(loc, storage)
        if here:
            found.extend(here)
            continue
        below = [u for name in sorted(io.list_dir(loc, storage)) for u in _output_runs(io.join_url(loc, name), storage)]
        if not below:
            raise InputError(f"no {MANIFEST_NAME} here or in the folders one level below", path=loc)
        found.extend(below)
    return found


def _output_runs(output: str, storage: Mapping[str, Any]) -> list[str]:
    """One output's run manifests, oldest first: its ledger's records, then its latest manifest when
    that run is not in the ledger (killed before its record was written)."""
    latest = io.join_url(output, MANIFEST_NAME)
    ids = layout.record_ids(io.list_dir(io.join_url(output, RUNS_DIR), storage))
    records = [io.join_url(output, RUNS_DIR, f"{i}.json") for i in ids]
    if not io.exists(latest, storage):
        return records
    if records:
        try:
            run_id = json.loads(io.read_text(latest, storage)).get("run", {}).get("id")
        except (ValueError, AttributeError):
            run_id = None
        if run_id in ids:
            return records
    return [*records, latest]


def run_id_url(output: str, run_id: str, storage: Mapping[str, Any]) -> str:
    """A run's record in an output's ledger, by its id or an unambiguous prefix of it."""
    names = layout.record_ids(io.list_dir(io.join_url(output, RUNS_DIR), storage))
    hits = [n for n in names if n == run_id] or [n for n in names if n.startswith(run_id)]
    if len(hits) != 1:
        what = "no run" if not hits else f"{len(hits)} runs"
        raise InputError(f"{what} with id {run_id!r} in this output's {RUNS_DIR}/ (batchserve runs lists them)",
                         path=output)
    return io.join_url(output, RUNS_DIR, f"{hits[0]}.json")


def load_runs(urls: Sequence[str], storage: Mapping[str, Any]) -> list[manifest.Manifest]:
    """Typed manifests (schema-checked, upgraded); a bad one is an error naming its file."""
    return [manifest.loads(io.read_text(u, storage), source=u) for u in urls]


def _output_of(url: str) -> str:
    """The output folder a manifest URL belongs to (its latest manifest, or a record in its ledger)."""
    head, _, name = url.rstrip("/").rpartition("/")
    if head.endswith("/" + RUNS_DIR) or head == RUNS_DIR:
        head = head[: -len(RUNS_DIR)]
    elif name != MANIFEST_NAME:
        return url
    return head.rstrip("/") or "."


def _alias_text(event: Mapping[str, Any] | None) -> str | None:
    """``production: rollback 3 -> 2 by ops`` from the audit event that last moved the run's alias."""
    if not event:
        return None
    moved = f" {event.get('from_version') or '-'} -> {event.get('to_version')}"
    who = f" by {event['actor']}" if event.get("actor") else ""
    return f"{event.get('alias') or '-'}: {event.get('action', 'moved')}{moved}{who}"


def run_rows(manifests: Sequence[manifest.Manifest], urls: Sequence[str]) -> list[RunRow]:
    """One row per run, oldest first; a run whose every output a later run of the same output replaced
    is not ``current`` (the night before a re-run, or the run a filtered run for that day superseded)."""
    claimed: dict[str, set[str]] = {}
    current: dict[int, bool] = {}
    order = sorted(range(len(manifests)), key=lambda i: (manifests[i].run.started_at, manifests[i].run.id),
                   reverse=True)
    for i in order:
        m, out = manifests[i], _output_of(urls[i])
        mine = {e.relpath for e in m.outputs}
        taken = claimed.setdefault(out, set())
        current[i] = bool(mine - taken) or (not mine and not taken)
        taken |= mine
    rows = []
    for i, (m, url) in enumerate(zip(manifests, urls, strict=True)):
        d = m.drift
        measured = d is not None and d.reference is not None
        rows.append(RunRow(
            output=_output_of(url), run_id=m.run.id, status=m.run.status, started_at=m.run.started_at,
            model=m.model.uri, model_version=m.model.version, files=m.totals.files, rows=m.totals.rows,
            seconds=m.totals.seconds, rows_per_second=m.totals.rows_per_second, failed_files=len(m.failures),
            drifted_features=len(d.drifted_features) if measured and d is not None else None,
            features=len(d.features) if measured and d is not None else None,
            drifted=tuple(d.drifted_features) if measured and d is not None else (),
            drifted_predictions=tuple(d.drifted_predictions) if measured and d is not None else (),
            predictions=len(d.predictions) if measured and d is not None else None,
            scope=tuple(m.scope.get("filters", [])), current=current[i],
            alias_event=_alias_text(m.model.alias_event),
        ))
    return sorted(rows, key=lambda r: (r.started_at, r.run_id))


def runs_frame(rows: Sequence[RunRow]) -> pl.DataFrame:
    """The rows as a polars DataFrame (``drifted`` as a list column)."""
    import polars as pl

    schema = {f.name: None for f in dataclasses.fields(RunRow)}
    data = [{**dataclasses.asdict(r), "drifted": list(r.drifted)} for r in rows]
    if not data:
        return pl.DataFrame(schema=list(schema))
    return pl.DataFrame(data)


def file_rows(manifests: Sequence[manifest.Manifest], urls: Sequence[str]) -> list[FileRow]:
    """One row per input file of each run, in the runs' order and each run's input order."""
    rows = []
    for m, url in zip(manifests, urls, strict=True):
        outputs = {e.relpath: e for e in m.outputs}
        failed = {f.relpath: f.error for f in m.failures}
        for i in m.inputs:
            o = outputs.get(i.relpath)
            status = (o.status or "scored") if o is not None else ("failed" if i.relpath in failed else "not scored")
            rows.append(FileRow(
                output=_output_of(url), run_id=m.run.id, relpath=i.relpath, status=status, input_path=i.path,
                input_bytes=i.bytes, input_rows=i.rows, output_path=o.path if o else None,
                output_rows=o.rows if o else None, output_bytes=o.bytes if o else None,
                checksum=o.checksum if o else None, note=o.note if o else failed.get(i.relpath),
            ))
    return rows


def files_frame(rows: Sequence[FileRow]) -> pl.DataFrame:
    """The rows as a polars DataFrame, typed even when empty."""
    import polars as pl

    text, count = pl.String, pl.Int64
    schema = {"output": text, "run_id": text, "relpath": text, "status": text, "input_path": text,
              "input_bytes": count, "input_rows": count, "output_path": text, "output_rows": count,
              "output_bytes": count, "checksum": text, "note": text}
    return pl.DataFrame([dataclasses.asdict(r) for r in rows], schema=schema)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def diff(a: manifest.Manifest, b: manifest.Manifest) -> list[Change]:
    """What changed from run ``a`` to run ``b``: model, config, inputs, rows, timings, drift per feature."""
    out: list[Change] = []

    def add(section: str, item: str, before: Any, after: Any) -> None:
        if before != after:
            out.append(Change(section, item, _text(before), _text(after)))

    add("model", "uri", a.model.uri, b.model.uri)
    add("model", "version", a.model.version, b.model.version)
    add("model", "sha256", a.model.sha256[:12], b.model.sha256[:12])
    ca, cb = a.run.config, b.run.config
    for key in sorted(set(ca) | set(cb)):
        if key in ("output",):
            continue
        add("config", key, ca.get(key), cb.get(key))
    ina, inb = {e.relpath: e for e in a.inputs}, {e.relpath: e for e in b.inputs}
    for rel in sorted(set(ina) | set(inb)):
        ea, eb = ina.get(rel), inb.get(rel)
        if ea is None:
            add("inputs", rel, "absent", f"{eb.rows if eb else 0} rows")
        elif eb is None:
            add("inputs", rel, f"{ea.rows} rows", "absent")
        elif (ea.rows, ea.bytes, ea.version) != (eb.rows, eb.bytes, eb.version):
            add("inputs", rel, f"{ea.rows} rows, {ea.bytes} bytes", f"{eb.rows} rows, {eb.bytes} bytes (changed)")
    add("rows", "files", a.totals.files, b.totals.files)
    add("rows", "rows", a.totals.rows, b.totals.rows)
    add("rows", "failed files", len(a.failures), len(b.failures))
    add("run", "status", a.run.status, b.run.status)
    if a.run.id != b.run.id:  # one run against itself has nothing that changed, timings included
        for name in ("seconds", "rows_per_second", "read_seconds", "infer_seconds", "write_seconds"):
            out.append(Change("timings", name, _text(getattr(a.totals, name)), _text(getattr(b.totals, name))))
    da, db = a.drift, b.drift
    for role in ("features", "predictions"):
        cols_a = getattr(da, role) if da is not None else {}
        cols_b = getattr(db, role) if db is not None else {}
        section = "drift" if role == "features" else "prediction drift"
        for name in sorted(set(cols_a) | set(cols_b)):
            fa, fb = cols_a.get(name), cols_b.get(name)
            metric = (fb.metric if fb is not None else None) or (fa.metric if fa is not None else None) or "psi"
            va = fa.value(metric) if fa is not None else None
            vb = fb.value(metric) if fb is not None else None
            ta = "drifted" if fa is not None and fa.drifted else "ok"
            tb = "drifted" if fb is not None and fb.drifted else "ok"
            before, after = f"{_text(va)} {ta}" if fa else "-", f"{_text(vb)} {tb}" if fb else "-"
            if before != after:
                out.append(Change(section, f"{name} {metric}", before, after))
    return out


def runs(*locations: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Every run found at these outputs (or their parent folder), oldest first, as a polars DataFrame:
    ``batchserve.runs("out/nightly").filter(pl.col("drifted_features") > 0)``."""
    storage = dict(storage_options or {})
    urls = find_manifests(list(locations), storage)
    return runs_frame(run_rows(load_runs(urls, storage), urls))


def files(*locations: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Every input file of the runs found at these outputs and what became of it, as a polars
    DataFrame (one row per file per run): ``batchserve.files("out/nightly").filter(pl.col("status")
    != "scored")`` lists what last night skipped or never reached, with the error."""
    storage = dict(storage_options or {})
    urls = find_manifests(list(locations), storage)
    return files_frame(file_rows(load_runs(urls, storage), urls))


def diff_runs(a: str, b: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """What changed between two runs (manifests or output folders) as a polars DataFrame with
    columns section, item, before, after."""
    storage = dict(storage_options or {})
    urls = [find_manifests([a], storage)[0], find_manifests([b], storage)[0]]
    first, second = load_runs(urls, storage)
    return diff_frame(diff(first, second))


def diff_frame(changes: Sequence[Change]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame([dataclasses.asdict(c) for c in changes],
                        schema={"section": pl.String, "item": pl.String, "before": pl.String, "after": pl.String})

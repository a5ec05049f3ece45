"""Client side of a run: plan, check, attach a cluster, submit, merge receipts, commit.

Everything that can be checked without scoring is checked before the first
task: the model resolves and parses, every file's footer has every feature as
a numeric column, the output is empty (or ``overwrite``) and writable. Then one
task per input file goes to Dask (large files split by row groups and merged
back in order); tasks return receipts, and the manifest and ``_SUCCESS`` are
written last, so a reader that sees ``_SUCCESS`` sees a complete output.

Example::

    >>> result = score(model="sample_data/model", input="sample_data/transactions",
    ...                output="out/", overwrite=True)  # doctest: +SKIP
    >>> result.manifest.totals.rows  # doctest: +SKIP
    100000
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import getpass
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from distributed import Client, KilledWorker, Nanny, Scheduler, SpecCluster, as_completed

from batchserve import drift, io, manifest, model, scoring
from batchserve.config import DEFAULT_BATCH_SIZE, ScoreConfig, resolve_score_config
from batchserve.errors import (
    BatchserveError,
    ClusterError,
    DataError,
    InputError,
    Interrupted,
    LockedError,
    ModelError,
    OutputError,
    SchemaError,
)
from batchserve.worker import (
    FileTask,
    ModelPlugin,
    ModelSpec,
    Receipt,
    merge_pieces,
    score_file,
    stop_commits,
    worker_report,
)

__all__ = [
    "ProgressEvent",
    "RunPlan",
    "RunResult",
    "resolve_model",
    "inspect_model",
    "plan_run",
    "validate",
    "score",
    "fingerprint",
    "profile",
    "default_workers",
    "read_manifest",
    "write_text",
    "drift_failure",
]

log = logging.getLogger("batchserve")
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
LOCK_NAME = "_batchserve.lock"
#: The running manifest is rewritten at most this often while files commit.
JOURNAL_SECONDS = 2.0
#: A lock from another host older than this is taken over (same host: checked by pid).
STALE_LOCK_HOURS = 24


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Sent to the progress callback after planning and after every committed file."""

    phase: str  # "planned" | "file" | "done"
    files_done: int
    files_total: int
    rows_done: int
    rows_total: int
    elapsed_s: float
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided and checked on the client before any scoring."""

    model_uri: str
    model_url: str
    model_version: str | None
    info: model.ModelInfo
    features: scoring.FeaturePlan
    input_root: str
    partitions: tuple[io.Partition, ...]
    footers: tuple[io.Footer, ...]
    reference: manifest.Reference | None = None
    policy: drift.DriftPolicy = dataclasses.field(default_factory=drift.DriftPolicy)
    #: Files found bad while planning under --on-error skip.
    failures: tuple[manifest.FailureEntry, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.num_rows for f in self.footers)


@dataclasses.dataclass(frozen=True)
class RunResult:
    manifest: manifest.Manifest
    output: str
    manifest_url: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchserve")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def resolve_model(uri: str, version: int | None, storage: Mapping[str, Any]) -> tuple[str, str | None, bytes]:
    """A model file, or ``<root>/<version>/model.onnx`` from a model repository."""
    if io.isdir(uri, storage):
        chosen = model.choose_version(io.list_dir(uri, storage), version, uri)
        url = io.join_url(uri, chosen, "model.onnx")
        if not io.exists(url, storage):
            raise ModelError(f"model version {chosen} has no model.onnx", path=url)
        return url, chosen, io.read_bytes(url, storage)
    if version is not None:
        raise ModelError("--model-version needs a model repository folder, not a file", path=uri)
    if not io.exists(uri, storage):
        raise ModelError("model not found", path=uri)
    return uri, None, io.read_bytes(uri, storage)


def inspect_model(
    uri: str, *, model_version: int | None = None, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model's signature and provenance, as ``batchserve inspect`` shows it."""
    url, version, data = resolve_model(uri, model_version, storage_options or {})
    try:
        info = model.describe(data)
    except BatchserveError as exc:
        exc.path = exc.path or url
        raise
    try:
        names, problem = info.feature_names, None
    except BatchserveError as exc:  # inspect is where one looks at a broken model: show it, say what is wrong
        names, problem = None, str(exc)
    return {"uri": uri, "resolved_uri": url, "version": version, **info.as_dict(),
            "feature_names": names, "feature_names_error": problem}


def plan_run(cfg: ScoreConfig) -> RunPlan:
    """Resolve the model and inputs and check every footer; raises before any scoring.

    Which files are good is decided by the model (features present and numeric, ``--keep``
    columns present) and by the majority of files for the column types of the output, never
    by whichever file sorts first; under ``--on-error skip`` only the odd files are skipped.
    """
    storage = cfg.storage
    url, version, data = resolve_model(cfg.model, cfg.model_version, storage)
    try:
        info = model.describe(data)
        model.check_runnable(info, data)
    except BatchserveError as exc:
        exc.path = exc.path or url
        raise
    root, pairs, failures = _read_inputs(cfg)
    skip = cfg.on_error == "skip"
    out_names = [cfg.prefix + o.name for o in info.outputs]
    names = _majority_names(pairs)
    try:
        fplan = scoring.plan_features(info, cfg.features, names)
    except BatchserveError as exc:
        exc.path = exc.path or url
        raise
    fplan = dataclasses.replace(fplan, nan=cfg.nan)
    fitting = []
    for part, footer in pairs:
        try:
            _check_file(cfg, fplan, out_names, part, footer)
        except BatchserveError as exc:
            if not skip:
                raise
            failures.append(manifest.FailureEntry(part.url, part.relpath, str(exc)))
            continue
        fitting.append((part, footer))
    if not fitting:
        raise SchemaError(f"no input file fits the model; first: {failures[0].error}", path=cfg.input)
    good = []
    expected = _majority_types(cfg, fitting)
    for part, footer in fitting:
        try:
            _check_majority(cfg, expected, len(fitting), part, footer)
        except BatchserveError as exc:
            if not skip:
                raise
            failures.append(manifest.FailureEntry(part.url, part.relpath, str(exc)))
            continue
        good.append((part, footer))
    policy = drift.parse_policy(cfg.drift_metric, cfg.drift_threshold)
    reference = load_reference(cfg.reference, storage, fplan.features) if cfg.reference else None
    return RunPlan(
        cfg.model, url, version, info, fplan, root, tuple(p for p, _ in good), tuple(f for _, f in good),
        reference, policy, tuple(failures),
    )


def _majority_names(pairs: list[tuple[io.Partition, io.Footer]]) -> list[str]:
    """The column names most files have (feature planning by column needs one list)."""
    votes = collections.Counter(tuple(f.schema.names) for _, f in pairs)
    return list(votes.most_common(1)[0][0])


#: A column's vote when a file does not have it (only counted when every column is kept).
_ABSENT = "absent"


def _type_vote(schema: pa.Schema, col: str) -> str | None:
    """A file's vote for a column's type; an all-null column (e.g. an empty pandas file) fits any."""
    i = schema.get_field_index(col)
    if i < 0:
        return _ABSENT
    t = schema.field(i).type
    return None if pa.types.is_null(t) else str(t)


def _majority_types(cfg: ScoreConfig, pairs: list[tuple[io.Partition, io.Footer]]) -> dict[str, str]:
    """Per output column, the type most files have; a tie is an error no rule settles."""
    if cfg.keep is not None:
        cols = list(cfg.keep)
    else:
        cols = list(dict.fromkeys(n for _, f in pairs for n in f.schema.names))
    expected: dict[str, str] = {}
    for col in cols:
        votes = collections.Counter(v for _, f in pairs if (v := _type_vote(f.schema, col)) is not None)
        if not votes:
            continue
        ranked = votes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            sides = "; ".join(
                f"{t} in {n} file(s), e.g. {next(p.relpath for p, f in pairs if _type_vote(f.schema, col) == t)}"
                for t, n in ranked[:2]
            )
            raise SchemaError(
                f"input files disagree on this column and no majority decides ({sides}); make the files agree, "
                "or leave the column out with --keep",
                path=cfg.input, column=col,
            )
        expected[col] = ranked[0][0]
    return expected


def _check_majority(
    cfg: ScoreConfig, expected: Mapping[str, str], n_files: int, part: io.Partition, footer: io.Footer
) -> None:
    """One output schema per run: a file's kept columns must have the types most files have."""
    for col, want in expected.items():
        have = _type_vote(footer.schema, col)
        if have is None or have == want:
            continue
        if have == _ABSENT:
            msg = "schema differs from most input files: a column they have is missing here"
        elif want == _ABSENT:
            msg = "schema differs from most input files: an extra column is here; pass --keep to choose the columns"
        else:
            raise SchemaError(f"schema differs from most input files ({n_files} checked)", path=part.url,
                              column=col, expected=want, found=have)
        raise SchemaError(msg, path=part.url, column=col)


def _read_inputs(cfg: ScoreConfig) -> tuple[str, list[tuple[io.Partition, io.Footer]], list[manifest.FailureEntry]]:
    """List the input and read every footer (in parallel, retrying transient errors).

    Under ``--on-error skip`` an unreadable file is recorded as a failure instead of stopping the run.
    """
    root, parts = io.list_partitions(cfg.input, cfg.storage)
    skip = cfg.on_error == "skip"
    results = io.read_footers([p.url for p in parts], cfg.storage, retries=cfg.retries, keep_errors=skip)
    pairs: list[tuple[io.Partition, io.Footer]] = []
    failures: list[manifest.FailureEntry] = []
    for part, result in zip(parts, results, strict=True):
        if isinstance(result, BatchserveError):
            failures.append(manifest.FailureEntry(part.url, part.relpath, str(result)))
        else:
            pairs.append((part, result))
    if not pairs:
        raise InputError("every input file is unreadable; see the manifest's failures", path=cfg.input)
    return root, pairs, failures


def _check_file(
    cfg: ScoreConfig, fplan: scoring.FeaturePlan, out_names: list[str], part: io.Partition, footer: io.Footer
) -> None:
    """Whether this file can feed the model: features present and numeric, kept columns present."""
    dup = [n for n, k in collections.Counter(footer.schema.names).items() if k > 1]
    if dup:
        raise SchemaError("this column name appears more than once in the file; rename one", path=part.url,
                          column=dup[0])
    scoring.check_schema(fplan, footer.schema, part.url)
    kept = footer.schema.names if cfg.keep is None else list(cfg.keep)
    for col in kept:
        if footer.schema.get_field_index(col) < 0:
            raise SchemaError("column named in --keep is missing", path=part.url, column=col)
    for col in out_names:
        if col in kept:
            raise SchemaError(
                "prediction column would overwrite an input column",
                path=part.url, column=col,
                hint="pass --prefix (e.g. --prefix pred_) or drop the column with --keep",
            )


def fingerprint(cfg: ScoreConfig, plan: RunPlan) -> str:
    """Digest of everything that decides output values: same fingerprint, same bytes of meaning."""
    basis = {
        "model": plan.info.sha256, "features": [dataclasses.asdict(b) for b in plan.features.bindings],
        "keep": list(cfg.keep) if cfg.keep is not None else None, "prefix": cfg.prefix,
    }
    return model.sha256_hex(json.dumps(basis, sort_keys=True).encode())


def load_reference(uri: str, storage: Mapping[str, Any], features: tuple[str, ...]) -> manifest.Reference:
    """Read and check a reference up front: a bad one must fail before anything is scored."""
    if not io.exists(uri, storage):
        raise InputError("reference not found; pass a profile from `batchserve profile` or a _manifest.json", path=uri)
    data = io.read_bytes(uri, storage)
    ref = manifest.load_reference(data.decode("utf-8", errors="replace"), uri, model.sha256_hex(data))
    manifest.check_reference_covers(ref, list(features))
    return ref


def validate(config: ScoreConfig | None = None, /, **settings: Any) -> RunPlan:
    """Check the model-to-data mapping and every file's schema without scoring."""
    cfg = config or _config_from(settings, need_output=False)
    return plan_run(cfg)


def default_workers() -> int:
    """One worker per GPU; on CPU, a worker per 4 cores (ORT threads do the rest)."""
    gpus = model.visible_gpu_count()
    if gpus:
        return gpus
    cores = os.cpu_count() or 1
    return max(1, cores // 4)


def _gpu_env(i: int) -> dict[str, str]:
    """Rotate the visible GPUs so worker i sees its own first (dask-cuda's convention)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible is not None
        else [str(g) for g in range(model.visible_gpu_count())]
    )
    if not ids:
        return {}
    k = i % len(ids)
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids[k:] + ids[:k])}


@contextmanager
def _cluster(cfg: ScoreConfig) -> Iterator[tuple[Client, str, str]]:
    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler: {exc}; check --scheduler and that the scheduler is up",
                path=cfg.scheduler,
            ) from None
        try:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise ClusterError("the Dask cluster has no workers", path=cfg.scheduler) from None
            yield client, "scheduler", cfg.scheduler
        finally:
            client.close()
        return
    n = cfg.workers or default_workers()
    # Worker-side logs would repeat, with tracebacks, errors we report once ourselves;
    # --debug (DEBUG on our logger) lets them through.
    quiet = logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    workers = {
        i: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": _gpu_env(i), "name": i,
                                   "silence_logs": quiet}}
        for i in range(n)
    }
    cluster = SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                                  "dashboard_address": "127.0.0.1:0"}},
        workers=workers,
        silence_logs=quiet,
        name="batchserve-local",
    )
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(n, timeout=120)
            yield client, "local", str(cluster.scheduler_address)
        finally:
            client.close()
    finally:
        cluster.close()


def _pieces(footer: io.Footer, target_rows: int) -> list[tuple[int, ...]] | None:
    """Row-group ranges of about ``target_rows`` rows, or None to keep the file whole."""
    if footer.num_rows <= 2 * target_rows or len(footer.row_group_rows) < 2:
        return None
    ranges: list[tuple[int, ...]] = []
    current: list[int] = []
    rows = 0
    for i, n in enumerate(footer.row_group_rows):
        current.append(i)
        rows += n
        if rows >= target_rows:
            ranges.append(tuple(current))
            current, rows = [], 0
    if current:
        ranges.append(tuple(current))
    return ranges if len(ranges) > 1 else None


def _check_output_location(cfg: ScoreConfig, plan: RunPlan) -> None:
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


_MARKERS = frozenset({MANIFEST_NAME, SUCCESS_NAME, LOCK_NAME})


@dataclasses.dataclass(frozen=True)
class OutputSurvey:
    """What the output held before this run: which files a batchserve run wrote, from one listing."""

    #: The earlier run's manifest, when there is a readable one.
    previous: manifest.Manifest | None = None
    #: Data files an earlier batchserve run wrote (listed in its manifest or stamped in their footer):
    #: the only files --overwrite and --resume may replace or remove.
    ours: frozenset[str] = frozenset()


def _is_content(rel: str) -> bool:
    return rel not in _MARKERS and not rel.startswith(io.STAGING_DIR + "/")


def _survey_output(cfg: ScoreConfig) -> OutputSurvey:
    """Refuse a non-empty output without --overwrite/--resume, and foreign Parquet files with them."""
    storage = cfg.storage
    entries = io.output_files(cfg.output, storage)
    content = sorted(rel for rel in entries if rel != LOCK_NAME and not rel.startswith(io.STAGING_DIR + "/"))
    if content and not (cfg.overwrite or cfg.resume):
        raise OutputError(
            f"output folder is not empty ({len(content)} files); pass --resume to finish an earlier run "
            "or --overwrite to replace it",
            path=cfg.output,
        )
    if not content:
        return OutputSurvey()
    previous = _previous_manifest(cfg, MANIFEST_NAME in entries)
    listed = {e.relpath for e in previous.outputs} if previous else set()
    unknown = [rel for rel in content if _is_content(rel) and rel not in listed and rel.endswith(".parquet")
               and not io.is_hidden(rel)]
    stamped, foreign = _split_by_owner(cfg, unknown)
    if foreign:
        raise OutputError(
            f"output holds {len(foreign)} Parquet file(s) that no batchserve run wrote (e.g. {foreign[0]}); "
            "--overwrite and --resume only replace batchserve's own files: move them away or choose another output",
            path=cfg.output,
        )
    return OutputSurvey(previous, frozenset(listed | set(stamped)))


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


def _split_by_owner(cfg: ScoreConfig, rels: list[str]) -> tuple[list[str], list[str]]:
    """(stamped by a batchserve run, foreign) from the files' footers."""
    owners = _owners(cfg, rels)
    return [r for r in rels if owners[r]], [r for r in rels if not owners[r]]


def _check_output(cfg: ScoreConfig) -> OutputSurvey:
    survey = _survey_output(cfg)
    io.prepare_output(cfg.output, cfg.storage)
    return survey


def _config_from(settings: Mapping[str, Any], *, need_output: bool = True) -> ScoreConfig:
    flags = dict(settings)
    if not need_output:
        flags.setdefault("output", "")
    if "storage_options" in flags and isinstance(flags["storage_options"], Mapping):
        flags["storage_options"] = {k: str(v) for k, v in flags["storage_options"].items()}
    return resolve_score_config(flags, env={})


def _file_entries(receipts: list[Receipt], notes: Mapping[str, str]) -> list[manifest.FileEntry]:
    return [
        manifest.FileEntry(r.output_url, r.relpath, r.rows, r.bytes, checksum=r.checksum, status="scored",
                           note=notes.get(r.relpath))
        for r in receipts
    ]


def _build_manifest(
    cfg: ScoreConfig,
    plan: RunPlan,
    run_id: str,
    started_at: str,
    t0: float,
    receipts: list[Receipt],
    engine: manifest.EngineInfo | None,
    status: str,
    error: str | None,
    drift_data: dict[str, Any] | None = None,
    reused: list[manifest.FileEntry] | None = None,
    notes: Mapping[str, str] | None = None,
    failures: list[manifest.FailureEntry] | None = None,
) -> manifest.Manifest:
    seconds = time.perf_counter() - t0
    outputs = sorted((reused or []) + _file_entries(receipts, notes or {}), key=lambda e: e.relpath)
    rows = sum(e.rows for e in outputs)
    info = plan.info
    return manifest.Manifest(
        run=manifest.RunInfo(
            id=run_id, started_at=started_at, finished_at=_now(), status=status,
            batchserve_version=_version(), config=cfg.redacted(), engine=engine, error=error,
        ),
        model=manifest.ModelSection(
            uri=plan.model_uri, resolved_uri=plan.model_url, version=plan.model_version,
            sha256=info.sha256, bytes=info.bytes, producer_name=info.producer_name,
            producer_version=info.producer_version, ir_version=info.ir_version, opset=dict(info.opset),
            graph_name=info.graph_name, metadata_props=dict(info.metadata_props),
            inputs=[t.as_dict() for t in info.inputs], outputs=[t.as_dict() for t in info.outputs],
            features=list(plan.features.features), feature_source=plan.features.source,
        ),
        inputs=[
            manifest.FileEntry(p.url, p.relpath, f.num_rows, p.size, version=p.version)
            for p, f in zip(plan.partitions, plan.footers, strict=True)
        ],
        outputs=outputs,
        totals=manifest.Totals(
            files=len(outputs), rows=rows,
            bytes_in=sum(p.size for p in plan.partitions), bytes_out=sum(e.bytes for e in outputs),
            seconds=round(seconds, 4), rows_per_second=round(rows / seconds, 1) if seconds > 0 else 0.0,
            read_seconds=round(sum(r.read_s for r in receipts), 4),
            infer_seconds=round(sum(r.infer_s for r in receipts), 4),
            write_seconds=round(sum(r.write_s for r in receipts), 4),
        ),
        drift=drift_data,
        fingerprint=fingerprint(cfg, plan),
        failures=list(plan.failures) + list(failures or []),
    )


def _submit_all(
    client: Client, cfg: ScoreConfig, plan: RunPlan, spec: ModelSpec | None, run_id: str, n_workers: int,
    write: bool = True, skip_relpaths: frozenset[str] = frozenset(),
) -> dict[Any, str]:
    """One future per input file (a merge future for a split file), mapped to the file's relpath."""
    storage_pairs = cfg.storage_options
    target = cfg.split_rows or max(4 * cfg.batch_size, math.ceil(plan.rows / max(1, 2 * n_workers)))
    futures: dict[Any, str] = {}
    for part, footer in zip(plan.partitions, plan.footers, strict=True):
        if part.relpath in skip_relpaths:
            continue
        final = io.join_url(cfg.output, part.relpath)
        staging = io.join_url(cfg.output, io.STAGING_DIR, run_id, part.relpath)
        base = FileTask(
            run_id=run_id, input_url=part.url, relpath=part.relpath, output_url=final,
            staging_url=staging, keep=cfg.keep, batch_size=cfg.batch_size,
            plugin_name=spec.plugin_name if spec else None, plan=plan.features, prefix=cfg.prefix,
            storage_options=storage_pairs, stats=cfg.drift, write=write, retries=cfg.retries,
        )
        ranges = _pieces(footer, target) if write else None
        if ranges is None:
            futures[client.submit(score_file, base, key=f"score-{run_id}-{part.relpath}", pure=False)] = part.relpath
            continue
        piece_futures = []
        for k, groups in enumerate(ranges):
            piece_staging = f"{staging}.piece-{k:05d}"
            task = dataclasses.replace(base, staging_url=piece_staging, row_groups=groups, piece=k)
            piece_futures.append(
                client.submit(score_file, task, key=f"score-{run_id}-{part.relpath}-p{k}", pure=False)
            )
        merged = client.submit(
            merge_pieces, final, staging, storage_pairs, run_id, *piece_futures,
            key=f"merge-{run_id}-{part.relpath}", pure=False,
        )
        futures[merged] = part.relpath
    return futures


def new_run_id() -> str:
    """A run id: sortable by start time, unique enough to name staging folders and Dask keys."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def absolute_paths(cfg: ScoreConfig) -> ScoreConfig:
    """Local paths resolved on the client, before any task leaves it: a worker of an existing
    cluster would otherwise resolve ``out/`` against its own working directory."""
    storage = cfg.storage
    return dataclasses.replace(
        cfg,
        model=io.absolute_url(cfg.model, storage),
        input=io.absolute_url(cfg.input, storage),
        output=io.absolute_url(cfg.output, storage),
        reference=io.absolute_url(cfg.reference, storage) if cfg.reference else cfg.reference,
    )


def score(
    config: ScoreConfig | None = None,
    /,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    run_id: str | None = None,
    **settings: Any,
) -> RunResult:
    """Score a dataset; returns the manifest. Raises :class:`BatchserveError` on user errors.

    Pass a resolved :class:`ScoreConfig`, or the same settings as keyword arguments.
    Commit protocol: files are committed one by one (staged, then renamed/copied);
    ``_manifest.json`` is journaled as ``running`` while they commit, rewritten as
    ``succeeded``/``failed``/``interrupted`` at the end, and ``_SUCCESS`` comes last.
    """
    cfg = absolute_paths(config or _config_from(settings))
    started_at = _now()
    t0 = time.perf_counter()
    plan = plan_run(cfg)
    _check_output_location(cfg, plan)
    run_id = run_id or new_run_id()
    with _output_lock(cfg, run_id):
        survey = _check_output(cfg)
        return _score_locked(cfg, plan, run_id, started_at, t0, on_progress, survey)


def _score_locked(
    cfg: ScoreConfig, plan: RunPlan, run_id: str, started_at: str, t0: float,
    on_progress: Callable[[ProgressEvent], None] | None, survey: OutputSurvey,
) -> RunResult:
    storage = cfg.storage
    manifest_url = io.join_url(cfg.output, MANIFEST_NAME)
    success_url = io.join_url(cfg.output, SUCCESS_NAME)
    reused, notes = _resume_decisions(cfg, plan, survey.previous) if cfg.resume else ([], {})
    # From here the output is being changed: first make sure nothing marks it complete.
    io.remove(success_url, storage)
    if not cfg.resume:
        io.remove(manifest_url, storage)
    io.remove_staging(cfg.output, storage)  # leftovers of a SIGKILLed run are never committed
    todo = len(plan.partitions) - len(reused)
    total_rows = plan.rows
    log.info(
        "planned %d file(s), %d rows; model %s (sha256 %s)%s",
        len(plan.partitions), total_rows, plan.model_url, plan.info.sha256[:12],
        f"; resuming: {len(reused)} reused, {todo} to score" if cfg.resume else "",
    )
    if plan.failures:
        log.warning("skipping %d bad file(s): %s", len(plan.failures), "; ".join(f.error for f in plan.failures))
    if on_progress:
        on_progress(ProgressEvent("planned", 0, todo, 0, total_rows, 0.0))
    receipts: list[Receipt] = []
    failures: list[manifest.FailureEntry] = []
    engine_box: list[manifest.EngineInfo] = []
    last_journal = [0.0]

    def snapshot(status: str, error: str | None = None, drift_data: dict[str, Any] | None = None) -> manifest.Manifest:
        engine = engine_box[0] if engine_box else None
        return _build_manifest(
            cfg, plan, run_id, started_at, t0, receipts, engine, status, error, drift_data, reused, notes, failures
        )

    def journal(force: bool = False) -> None:
        # A SIGKILLed run leaves this behind, listing what it committed, for --resume to read.
        if force or time.monotonic() - last_journal[0] >= JOURNAL_SECONDS:
            io.write_text_atomic(manifest_url, manifest.dumps(snapshot("running")), storage)
            last_journal[0] = time.monotonic()

    journal(force=True)
    try:
        with _signals_raise_interrupted():
            _execute(cfg, plan, run_id, t0, receipts, engine_box, on_progress, with_model=True, write=True,
                     skip_relpaths=frozenset(e.relpath for e in reused), failures=failures, on_receipt=journal)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, Interrupted | KeyboardInterrupt) else "failed"
        error = str(exc) if isinstance(exc, BatchserveError) else f"{type(exc).__name__}: {exc}"
        with _signals_deferred():
            try:
                io.write_text_atomic(manifest_url, manifest.dumps(snapshot(status, error)), storage)
            finally:
                io.remove_staging(cfg.output, storage, run_id)
        raise
    with _signals_deferred():
        result, failure = _finish_run(cfg, plan, receipts, reused, failures, survey, snapshot)
        io.write_text_atomic(manifest_url, manifest.dumps(result), storage)
        io.remove_staging(cfg.output, storage)
        if failure is not None:
            raise failure
        io.write_text_atomic(success_url, "", storage)
    if on_progress:
        on_progress(ProgressEvent(
            "done", len(receipts), len(receipts), result.totals.rows, total_rows, result.totals.seconds
        ))
    return RunResult(result, cfg.output, manifest_url)


def _finish_run(
    cfg: ScoreConfig, plan: RunPlan, receipts: list[Receipt], reused: list[manifest.FileEntry],
    failures: list[manifest.FailureEntry], survey: OutputSurvey, snapshot: Callable[..., manifest.Manifest],
) -> tuple[manifest.Manifest, BatchserveError | None]:
    """The final manifest: stale files of earlier runs removed, the output checked from this side."""
    drift_data = _drift_data(cfg, plan, receipts)
    if drift_data is not None and reused:
        drift_data["coverage"] = f"statistics cover the {len(receipts)} file(s) scored by this run, not reused ones"
    draft = snapshot("succeeded", None, drift_data)
    _remove_stale_outputs(cfg, survey, draft.outputs)
    failure: BatchserveError | None = None
    problem = _verify_outputs(cfg, draft.outputs, survey)
    if problem is not None:
        failure = OutputError(problem, path=cfg.output)
    n_bad = len(plan.failures) + len(failures)
    if failure is None and cfg.max_failed_files is not None and n_bad > cfg.max_failed_files:
        first = (list(plan.failures) + failures)[0]
        failure = DataError(
            f"{n_bad} file(s) failed, more than --max-failed-files {cfg.max_failed_files}; first: {first.error}",
            path=cfg.output,
        )
    return (draft, None) if failure is None else (snapshot("failed", str(failure), drift_data), failure)


def _resume_decisions(
    cfg: ScoreConfig, plan: RunPlan, prev: manifest.Manifest | None
) -> tuple[list[manifest.FileEntry], dict[str, str]]:
    """Which committed outputs an earlier run left can be kept, and why the rest are rescored.

    Outputs of inputs that no longer exist are not kept: they are removed before ``_SUCCESS``.
    """
    storage = cfg.storage
    notes: dict[str, str] = {}
    if prev is None:
        return [], {p.relpath: "no earlier manifest to resume from" for p in plan.partitions}
    same_settings = prev.fingerprint == fingerprint(cfg, plan)
    why_all = None
    if prev.model.sha256 != plan.info.sha256:
        why_all = f"model changed (sha256 {prev.model.sha256[:12]} -> {plan.info.sha256[:12]})"
    elif not same_settings:
        why_all = "features, --keep or --prefix changed"
    prev_in = {e.relpath: e for e in prev.inputs}
    prev_out = {e.relpath: e for e in prev.outputs}
    reused: list[manifest.FileEntry] = []
    for part in plan.partitions:
        out, inp = prev_out.get(part.relpath), prev_in.get(part.relpath)
        final = io.join_url(cfg.output, part.relpath)
        if why_all:
            notes[part.relpath] = why_all
        elif out is None:
            notes[part.relpath] = f"not committed by run {prev.run.id} ({prev.run.status})"
        elif inp is None or inp.bytes != part.size or inp.version != part.version:
            notes[part.relpath] = "input changed (size or modification time)"
        elif not io.exists(final, storage) or io.file_size(final, storage) != out.bytes:
            notes[part.relpath] = "committed output is missing or changed"
        else:
            reused.append(dataclasses.replace(out, status="reused", note=f"committed by run {prev.run.id}"))
    log.info("resume: %d file(s) reused, %d to score", len(reused), len(notes))
    return reused, notes


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextmanager
def _signals_raise_interrupted() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` in the main thread, once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must not be interrupted again
        raise Interrupted(
            f"interrupted by {_signal_name(signum)}; committed files are kept and listed in the manifest; "
            "re-run with --resume to finish",
            signum=signum,
        )

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the manifest and _SUCCESS are written, then act on them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {sig: signal.signal(sig, lambda s, _f: got.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if got:
        raise Interrupted(f"interrupted by {_signal_name(got[0])} after the run completed", signum=got[0])


@contextmanager
def _output_lock(cfg: ScoreConfig, run_id: str) -> Iterator[None]:
    """Refuse a second live run into the same output; take over a stale lock."""
    storage = cfg.storage
    url = io.join_url(cfg.output, LOCK_NAME)
    me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
          "user": getpass.getuser(), "started_at": _now()}
    if io.exists(url, storage):
        try:
            other = json.loads(io.read_text(url, storage))
        except (ValueError, BatchserveError):
            other = {}
        if _lock_is_live(other):
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
        try:
            current = json.loads(io.read_text(url, storage))
            if current.get("run_id") == run_id:
                io.remove(url, storage)
        except (ValueError, BatchserveError):
            pass


def _lock_is_live(lock: Mapping[str, Any]) -> bool:
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
        started = dt.datetime.strptime(str(lock.get("started_at")), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return False
    return dt.datetime.now(dt.UTC) - started < dt.timedelta(hours=STALE_LOCK_HOURS)


def _execute(
    cfg: ScoreConfig,
    plan: RunPlan,
    run_id: str,
    t0: float,
    receipts: list[Receipt],
    engine_box: list[manifest.EngineInfo],
    on_progress: Callable[[ProgressEvent], None] | None,
    *,
    with_model: bool,
    write: bool,
    skip_relpaths: frozenset[str] = frozenset(),
    failures: list[manifest.FailureEntry] | None = None,
    on_receipt: Callable[[], None] | None = None,
) -> None:
    """Attach a cluster, install the model, run every task, collect receipts as they come."""
    total_rows = plan.rows
    with _cluster(cfg) as (client, kind, address):
        workers_info = client.scheduler_info(n_workers=-1)["workers"]
        hosts: dict[str, list[str]] = {}
        for addr, w in sorted(workers_info.items()):
            hosts.setdefault(w.get("host", addr), []).append(addr)
        spec: ModelSpec | None = None
        per_worker: list[manifest.WorkerInfo] = []
        if with_model:
            spec = ModelSpec(
                url=plan.model_url, sha256=plan.info.sha256, device=cfg.device, plan=plan.features,
                prefix=cfg.prefix, storage_options=cfg.storage_options,
                workers_per_host=tuple((h, len(a)) for h, a in hosts.items()),
                worker_slots=tuple((a, i) for addrs in hosts.values() for i, a in enumerate(addrs)),
            )
            client.register_plugin(ModelPlugin(spec), name=spec.plugin_name)
            reports = client.run(worker_report, spec.plugin_name)
            per_worker = [manifest.WorkerInfo(**r) for _, r in sorted(reports.items())]
            for w in per_worker:
                if w.fallback_reason:  # expected under --device auto on CPU machines: info, not a warning
                    log.info("worker %s runs on CPU: %s", w.address, w.fallback_reason)
        engine_box.append(manifest.EngineInfo(kind, address, len(workers_info), cfg.device, per_worker))
        futures = _submit_all(client, cfg, plan, spec, run_id, len(workers_info), write=write,
                              skip_relpaths=skip_relpaths)
        rows_done = 0
        try:
            for fut in as_completed(futures):
                try:
                    receipt: Receipt = fut.result()
                except BatchserveError as exc:
                    if cfg.on_error != "skip" or failures is None:
                        raise
                    rel = futures[fut]
                    log.warning("skipping %s: %s", rel, exc)
                    failures.append(manifest.FailureEntry(exc.path or rel, rel, str(exc)))
                    continue
                except KilledWorker as exc:
                    # Dask already re-ran the task on other workers; it kept killing them.
                    raise ClusterError(
                        f"workers kept dying while running this file ({exc}); it may need more memory "
                        "than a worker has: try a smaller --batch-size or larger workers",
                    ) from None
                receipts.append(receipt)
                rows_done += receipt.rows
                if on_receipt:
                    on_receipt()
                if receipt.attempts > 1:
                    log.warning("%s needed %d attempts (transient errors)", receipt.relpath, receipt.attempts)
                if write:
                    log.info("committed %s (%d rows)", receipt.output_url, receipt.rows)
                else:
                    log.info("profiled %s (%d rows)", receipt.input_url, receipt.rows)
                if on_progress:
                    on_progress(ProgressEvent(
                        "file", len(receipts), len(futures), rows_done, total_rows,
                        time.perf_counter() - t0, receipt.output_url or receipt.input_url,
                    ))
        except BaseException:
            if write:
                _stop_commits(client, run_id)
            _harvest_finished(list(futures), receipts)
            if write:
                _settle_in_flight(cfg, futures, receipts, run_id, wait=True)
            client.cancel(list(futures))
            if write:  # again: a worker that joined meanwhile is fenced too, and nothing unlisted stays
                _stop_commits(client, run_id)
                _settle_in_flight(cfg, futures, receipts, run_id, wait=False)
            raise


def _stop_commits(client: Client, run_id: str) -> None:
    """Close the commit fence on every worker: once this returns, no task of the run moves a file
    into place, and none is in the middle of doing so."""
    try:
        done = client.run(stop_commits, run_id, on_error="return")
    except Exception as exc:  # noqa: BLE001 - already failing; the output is settled file by file below
        log.warning("could not stop commits on every worker (%s); the output is checked file by file", exc)
        return
    if not all(v is True for v in done.values()):
        log.warning("some workers did not confirm the stop; the output is checked file by file")


def _owners(cfg: ScoreConfig, rels: list[str]) -> dict[str, str | None]:
    """The run id stamped in each file's footer (None: foreign, or unreadable)."""
    urls = [io.join_url(cfg.output, rel) for rel in rels]
    footers = io.read_footers(urls, cfg.storage, retries=cfg.retries, keep_errors=True)
    out: dict[str, str | None] = {}
    for rel, footer in zip(rels, footers, strict=True):
        meta = (footer.schema.metadata if isinstance(footer, io.Footer) else None) or {}
        owner = meta.get(io.OWNER_KEY)
        out[rel] = owner.decode("utf-8", "replace") if owner is not None else None
    return out


def _settle_in_flight(
    cfg: ScoreConfig, futures: Mapping[Any, str], receipts: list[Receipt], run_id: str, *, wait: bool
) -> None:
    """Account for files committed just before the fence closed, whose receipts are still on their way.

    They carry this run's stamp. Each is waited for briefly (``wait``) and recorded; one whose
    receipt never comes is removed, so the manifest lists exactly the files on disk.
    """
    done = {r.relpath for r in receipts if r.committed}
    pending = {rel: fut for fut, rel in futures.items() if rel not in done}
    if not pending:
        return
    found = io.output_files(cfg.output, cfg.storage)
    owners = _owners(cfg, [rel for rel in pending if rel in found])
    for rel, owner in owners.items():
        if owner != run_id:
            continue  # an earlier run's file, untouched by this one
        receipt = None
        if wait:
            try:
                receipt = pending[rel].result(timeout=10)
            except Exception:  # noqa: BLE001 - whatever went wrong, the file is not accounted for
                receipt = None
        if isinstance(receipt, Receipt) and receipt.committed:
            receipts.append(receipt)
            continue
        io.remove(io.join_url(cfg.output, rel), cfg.storage)
        log.warning("removed %s: committed as the run stopped, but its receipt never came", rel)


def _harvest_finished(futures: list[Any], receipts: list[Receipt]) -> None:
    """On the way out, record files that finished but whose receipts were not read yet.

    They are committed on disk; listing them keeps --resume from redoing them.
    """
    seen = {(r.relpath, r.piece) for r in receipts}
    for fut in futures:
        if fut.status != "finished":
            continue
        try:
            receipt = fut.result(timeout=1)
        except Exception:  # noqa: BLE001, S112 - best effort while already failing
            continue
        if isinstance(receipt, Receipt) and receipt.committed and (receipt.relpath, receipt.piece) not in seen:
            receipts.append(receipt)


def _current_stats(plan: RunPlan, receipts: list[Receipt]) -> tuple[dict[str, drift.ColumnSummary], list[str]]:
    current = drift.merge_maps(r.stats for r in receipts if r.stats is not None)
    feats = list(plan.features.features)
    preds = [k for k in current if k not in set(feats)]
    order = {o.name: i for i, o in enumerate(plan.info.outputs)} if plan.info is not None else {}

    def output_rank(name: str) -> tuple[int, str]:
        base = name.split(".")[0].split("[")[0]
        return (order.get(base, len(order)), name)

    return current, sorted(preds, key=output_rank)


def _drift_data(cfg: ScoreConfig, plan: RunPlan, receipts: list[Receipt]) -> dict[str, Any] | None:
    if not cfg.drift:
        return None
    current, preds = _current_stats(plan, receipts)
    section = manifest.drift_section(current, list(plan.features.features), preds, plan.reference, plan.policy)
    if plan.reference is not None:
        log.info(
            "drift against %s: %d of %d feature(s) drifted%s", plan.reference.uri, len(section["drifted_features"]),
            len(plan.features.features),
            (": " + ", ".join(section["drifted_features"])) if section["drifted_features"] else "",
        )
    return section


def profile(
    *,
    input: str,
    output: str,
    features: list[str] | tuple[str, ...] | None = None,
    model: str | None = None,
    model_version: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    prefix: str = "",
    storage_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> manifest.Profile:
    """Build a reference profile of trusted data through the same Dask path as ``score``.

    Without ``model``, the features are ``features`` or every numeric column; with it, the
    model's features, and the prediction columns are profiled too.
    """
    opts = {k: str(v) for k, v in (storage_options or {}).items()}
    cfg = _config_from({
        "model": model or "", "input": input, "output": output, "features": features, "model_version": model_version,
        "batch_size": batch_size, "workers": workers, "scheduler": scheduler, "device": device, "prefix": prefix,
        "storage_options": opts,
    })
    cfg = absolute_paths(cfg)
    storage = cfg.storage
    _check_profile_output(cfg)
    t0 = time.perf_counter()
    if model:
        plan = plan_run(cfg)
    else:
        root, pairs, _ = _read_inputs(cfg)
        names = tuple(cfg.features) if cfg.features else tuple(
            f.name for f in pairs[0][1].schema if scoring.is_numeric_type(f.type)
        )
        if not names:
            raise SchemaError("no numeric columns to profile; pass --features", path=pairs[0][0].url)
        fplan = scoring.FeaturePlan(names, (scoring.InputBinding("features", "float64", names, 2),), "flag")
        for part, footer in pairs:
            scoring.check_schema(fplan, footer.schema, part.url)
        plan = RunPlan(
            "", "", None, None, fplan, root,  # type: ignore[arg-type] # no model: no info
            tuple(p for p, _ in pairs), tuple(f for _, f in pairs),
        )
    run_id = "profile-" + secrets.token_hex(3)
    receipts: list[Receipt] = []
    if on_progress:
        on_progress(ProgressEvent("planned", 0, len(plan.partitions), 0, plan.rows, 0.0))
    _execute(cfg, plan, run_id, t0, receipts, [], on_progress, with_model=bool(model), write=False)
    current, preds = _current_stats(plan, receipts)
    feats = list(plan.features.features)
    prof = manifest.Profile(
        created_at=_now(),
        batchserve_version=_version(),
        source={"input": cfg.input, "files": len(plan.partitions), "rows": plan.rows},
        model=None if not model else {"uri": model, "resolved_uri": plan.model_url, "sha256": plan.info.sha256},
        features=feats,
        predictions=preds,
        columns={
            **{n: manifest.column_record(current.get(n, drift.ColumnSummary()), "feature") for n in feats},
            **{n: manifest.column_record(current[n], "prediction") for n in preds},
        },
    )
    for name, col in prof.columns.items():
        s = current.get(name)
        if s is not None and s.count:
            edges = drift.quantiles(s, [i / 20 for i in range(21)])
            col["histogram"] = {"edges": edges, "counts": [
                round(float(v) * s.count) for v in drift.bin_shares(s, [e for e in edges[1:-1] if e is not None])
            ]}
    io.write_text_atomic(output, manifest.profile_dumps(prof), storage)
    if on_progress:
        on_progress(ProgressEvent("done", len(receipts), len(receipts), plan.rows, plan.rows, time.perf_counter() - t0))
    return prof


def _check_profile_output(cfg: ScoreConfig) -> None:
    """The profile is one JSON file: a folder there (or a path inside the input) is refused up front."""
    if io.isdir(cfg.output, cfg.storage):
        raise OutputError("profile output is a folder; give a file name such as reference.json", path=cfg.output)
    if io.same_location_or_inside(cfg.output, cfg.input, cfg.storage):
        raise OutputError("profile output is inside the input; write it elsewhere", path=cfg.output)


def _remove_stale_outputs(cfg: ScoreConfig, survey: OutputSurvey, outputs: list[manifest.FileEntry]) -> None:
    """Drop files an earlier batchserve run wrote that this run's outputs do not include
    (inputs deleted since, a different layout); foreign files are never touched."""
    keep = {e.relpath for e in outputs}
    for rel in sorted(survey.ours - keep):
        io.remove(io.join_url(cfg.output, rel), cfg.storage)
        log.info("removed %s: written by an earlier run, not an output of this one", rel)


def _verify_outputs(cfg: ScoreConfig, outputs: list[manifest.FileEntry], survey: OutputSurvey) -> str | None:
    """From the client's side, in one listing: every output the manifest lists is there with its
    size, and no other data file is. Workers that resolve paths differently (another working
    directory, another machine's disk) would otherwise leave ``_SUCCESS`` over missing files."""
    found = io.output_files(cfg.output, cfg.storage)
    for e in outputs:
        if found.get(e.relpath) != e.bytes:
            what = "missing" if e.relpath not in found else f"{found[e.relpath]} bytes, not {e.bytes}"
            return (f"committed file {e.relpath} is {what} in the output as this client sees it; workers may "
                    "see another filesystem (use absolute paths on storage every worker and the client share)")
    listed = {e.relpath for e in outputs}
    extra = sorted(rel for rel in found if rel.endswith(".parquet") and _is_content(rel) and not io.is_hidden(rel)
                   and rel not in listed)
    if extra:
        return f"the output holds {len(extra)} data file(s) this run did not write (e.g. {extra[0]})"
    return None


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run manifest as a dict (checked and upgraded to the current schema version)."""
    storage = dict(storage_options or {})
    if io.isdir(uri, storage):
        uri = io.join_url(uri, MANIFEST_NAME)
    if not io.exists(uri, storage):
        raise InputError("manifest not found", path=uri)
    return manifest.loads(io.read_text(uri, storage), source=uri).to_dict()


def write_text(uri: str, text: str, storage_options: Mapping[str, Any] | None = None) -> None:
    io.write_text_atomic(uri, text, dict(storage_options or {}))


def drift_failure(result: RunResult, max_share: float | None) -> str | None:
    """The one-line reason to exit 3, or None when drift stays within the policy."""
    d = result.manifest.drift
    if not d or d.get("reference") is None or not d["drifted_features"]:
        return None
    share = d["drift_share"]
    if max_share is not None and share <= max_share:
        return None
    parts = []
    for name in d["drifted_features"]:
        e = d["features"][name]
        metric = e["decided_by"]
        limit = e["threshold"] if metric == e["metric"] else "null-rate limit"
        parts.append(f"{name} ({metric} {e[metric]:.3f} > {limit})")
    limit_text = f" > --max-drift-share {max_share}" if max_share is not None else ""
    return (
        f"drift detected in {len(d['drifted_features'])} of {len(d['features'])} features "
        f"(share {share:.2f}{limit_text}): {', '.join(parts)}; outputs are committed"
    )

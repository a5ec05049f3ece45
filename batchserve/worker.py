"""Dask worker side: one ONNX Runtime session per worker, and the per-file task.

Heavy objects are built where they live. A task carries a picklable
:class:`FileTask`; the session comes from :class:`ModelPlugin`, registered once
per (model digest, device, feature plan) and built in ``setup()``: loaded,
warmed up, and checked for the provider it really got. Tasks return a
:class:`Receipt`, never data: scored rows go from the worker straight to storage.

Inside a task, reading, inference and writing overlap in three threads joined
by bounded queues (pyarrow and onnxruntime release the GIL), so memory stays at
about ``batch_size x (2 * QUEUE_DEPTH + 3)`` rows whatever the file size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
from distributed import WorkerPlugin, get_worker

from batchserve import drift, io, model, scoring
from batchserve.config import storage_dict
from batchserve.errors import BatchserveError, WorkerStateError

__all__ = [
    "ModelSpec",
    "ModelPlugin",
    "FileTask",
    "Receipt",
    "loaded_model",
    "score_file",
    "merge_pieces",
    "worker_report",
    "QUEUE_DEPTH",
    "commit_fence",
    "stop_commits",
]

QUEUE_DEPTH = 2


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The recipe for a session: where the model is and how to run it (no session inside)."""

    url: str
    sha256: str
    device: str
    plan: scoring.FeaturePlan
    prefix: str = ""
    storage_options: tuple[tuple[str, str], ...] = ()
    #: host -> number of our workers on it, to split that host's cores between them.
    workers_per_host: tuple[tuple[str, int], ...] = ()
    #: worker address -> index among workers on its host, for "worker i takes GPU i mod n".
    worker_slots: tuple[tuple[str, int], ...] = ()

    @property
    def plugin_name(self) -> str:
        # The digest in the name makes re-registering the same model a no-op.
        plan_digest = model.sha256_hex(repr((self.plan, self.prefix)).encode())[:8]
        return f"batchserve-model-{self.sha256[:16]}-{self.device}-{plan_digest}"

    @property
    def storage(self) -> dict[str, Any]:
        return storage_dict(self.storage_options)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _warmup_feeds(plan: scoring.FeaturePlan, rows: int = 2) -> dict[str, np.ndarray]:
    feeds = {}
    for b in plan.bindings:
        shape = (rows,) if b.rank == 1 else (rows, len(b.columns))
        feeds[b.input_name] = np.zeros(shape, dtype=np.dtype(b.dtype))
    return feeds


class ModelPlugin(WorkerPlugin):
    """Builds and holds this worker's session; Dask runs ``setup`` on every (new) worker."""

    idempotent = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.name = spec.plugin_name
        self.model: model.LoadedModel | None = None
        self.prediction_schema: pa.Schema | None = None
        self.setup_seconds = 0.0

    def setup(self, worker: Any) -> None:
        start = time.perf_counter()
        spec = self.spec
        data = io.read_bytes(spec.url, spec.storage)
        digest = model.sha256_hex(data)
        if digest != spec.sha256:
            raise WorkerStateError(
                "model file changed since the run was planned (sha256 differs); re-run to pick up the new model",
                path=spec.url, expected=spec.sha256[:12], found=digest[:12],
            )
        host = worker.address.rsplit(":", 1)[0].split("://")[-1]
        per_host = dict(spec.workers_per_host).get(host, 1)
        slot = dict(spec.worker_slots).get(worker.address)
        if slot is None:  # a replacement worker that joined after planning
            slot = int(worker.name) if str(worker.name).isdigit() else 0
        task_threads = max(1, int(getattr(worker.state, "nthreads", 1)))
        threads = max(1, _available_cores() // max(1, per_host) // task_threads)
        gpu = model.pick_gpu(spec.device, slot)
        loaded = model.build_session(data, device=spec.device, intra_op_threads=threads, gpu_id=gpu)
        outputs = loaded.run(_warmup_feeds(spec.plan))
        cols = scoring.outputs_to_columns(outputs, 2, spec.prefix)
        self.prediction_schema = pa.schema([pa.field(k, v.type) for k, v in cols.items()])
        self.model = loaded
        self.setup_seconds = time.perf_counter() - start

    def teardown(self, worker: Any) -> None:
        self.model = None


def loaded_model(worker: Any, plugin_name: str) -> ModelPlugin:
    """The one accessor for worker state; says how to fix it when it is missing."""
    plugin = worker.plugins.get(plugin_name)
    if plugin is None or getattr(plugin, "model", None) is None:
        raise WorkerStateError(
            f"this worker has no session for plugin {plugin_name!r}; tasks must be submitted through "
            "batchserve.score (which registers ModelPlugin) or after client.register_plugin(ModelPlugin(spec))"
        )
    return plugin  # type: ignore[no-any-return]


def worker_report(plugin_name: str, dask_worker: Any = None) -> dict[str, Any]:
    """Per-worker facts for the manifest (run with ``client.run``)."""
    plugin = loaded_model(dask_worker, plugin_name)
    m = plugin.model
    assert m is not None
    return {
        "address": dask_worker.address,
        "name": str(dask_worker.name),
        "provider": m.provider,
        "device": m.device,
        "gpu_id": m.gpu_id,
        "intra_op_threads": m.intra_op_threads,
        "fallback_reason": m.fallback_reason,
        "setup_seconds": round(plugin.setup_seconds, 4),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@dataclasses.dataclass(frozen=True)
class FileTask:
    """One unit of work: a whole input file, or one row-group range (a piece) of a large one."""

    run_id: str
    input_url: str
    relpath: str
    output_url: str
    staging_url: str
    keep: tuple[str, ...] | None
    batch_size: int
    #: None when profiling without a model.
    plugin_name: str | None
    plan: scoring.FeaturePlan
    prefix: str
    storage_options: tuple[tuple[str, str], ...]
    row_groups: tuple[int, ...] | None = None
    piece: int | None = None
    #: Summarise features and predictions for drift while scoring.
    stats: bool = True
    #: False for `batchserve profile`: read and summarise, write nothing.
    write: bool = True
    #: Retries after a transient error (StorageError etc.), with exponential backoff.
    retries: int = 0

    @property
    def storage(self) -> dict[str, Any]:
        return storage_dict(self.storage_options)


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What a task reports back: where the output is, how much, and where time went."""

    input_url: str
    relpath: str
    output_url: str
    rows: int
    bytes: int
    read_s: float
    infer_s: float
    write_s: float
    wall_s: float
    worker: str
    committed: bool
    piece: int | None = None
    #: Mergeable drift summaries of this file's features and predictions.
    stats: dict[str, drift.ColumnSummary] | None = None
    checksum: str | None = None
    #: Attempts this task needed (transient storage errors are retried in place).
    attempts: int = 1


_DONE = object()


class _CommitGate:
    """This worker process's gate in front of every commit (the final move of a file).

    Commits pass it concurrently; :meth:`stop` marks a run stopped and waits until no move is in
    progress, after which that run's commits are refused. The client calls ``stop`` on every
    worker (``client.run``) when a run ends early, so once it returns, the set of committed files
    is final and the manifest can list exactly what is on disk. Nothing crosses the network per
    file: a Dask Lock here cost 2-3 ms per commit (three scheduler round trips, serialised).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._stopped: set[str] = set()

    @contextmanager
    def commit(self, run_id: str) -> Iterator[None]:
        with self._cond:
            if run_id in self._stopped:
                raise WorkerStateError("the run was stopped before this file committed; it is abandoned")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def stop(self, run_id: str, timeout: float = 120.0) -> bool:
        """Refuse the run's commits from now on; True once no commit is in progress."""
        with self._cond:
            self._stopped.add(run_id)
            return self._cond.wait_for(lambda: self._active == 0, timeout)


_GATE = _CommitGate()


def commit_fence(run_id: str) -> Any:
    """The context a commit's final move runs in (see :class:`_CommitGate`)."""
    return _GATE.commit(run_id)


def stop_commits(run_id: str) -> bool:
    """Run on every worker by the client (``client.run``) when a run stops early."""
    return _GATE.stop(run_id)


class _Stage:
    """A daemon thread pulling from a source into a bounded queue, keeping its own time."""

    def __init__(self, source: Iterator[Any], stop: threading.Event) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._source = source
        self._stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(self._source)
                except StopIteration:
                    break
                finally:
                    self.seconds += time.perf_counter() - t0
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.error = exc
        self._put(_DONE)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.q.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item


class _Writer:
    """Consumes scored batches on its own thread so encoding (and drift statistics) overlap
    the next inference. Items are ``(batch or None, side job or None)``."""

    def __init__(self, open_writer: Callable[[pa.Schema], io.StagedWriter] | None, stop: threading.Event) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.seconds = 0.0
        self.stats_seconds = 0.0
        self.error: BaseException | None = None
        self.writer: io.StagedWriter | None = None
        self._open = open_writer
        self._stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _DONE:
                    return
                batch, side_job = item
                if side_job is not None:  # drift statistics overlap the next inference
                    t1 = time.perf_counter()
                    side_job()
                    self.stats_seconds += time.perf_counter() - t1
                if batch is None:
                    continue
                t0 = time.perf_counter()
                if self.writer is None:
                    assert self._open is not None
                    self.writer = self._open(batch.schema)
                self.writer.write(batch)
                self.seconds += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._stop.set()
            while True:  # drain so the producer never blocks on a dead consumer
                try:
                    if self.q.get(timeout=0.1) is _DONE:
                        return
                except queue.Empty:
                    return

    def put(self, batch: pa.RecordBatch | None, side_job: Callable[[], None] | None = None) -> None:
        while self.error is None:
            try:
                self.q.put((batch, side_job), timeout=0.1)
                return
            except queue.Full:
                continue
        raise self.error

    def finish(self) -> None:
        self.q.put(_DONE)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _keep_columns(task: FileTask, schema: pa.Schema) -> list[str]:
    return list(schema.names) if task.keep is None else list(task.keep)


def score_file(task: FileTask) -> Receipt:
    """Score one file (or piece), stage it, and commit it unless it is a piece.

    Transient errors (storage hiccups, object-store 5xx) are retried here with
    exponential backoff and jitter, ``task.retries`` times; data errors are not.
    A retry rewrites the same staging name, so a half-written attempt is replaced,
    never committed. With ``task.write`` false (profiling) it only reads and summarises.
    """
    attempts = 0

    def attempt() -> Receipt:
        nonlocal attempts
        attempts += 1
        return _score_file_once(task)

    receipt = io.with_retries(attempt, task.retries)
    return dataclasses.replace(receipt, attempts=attempts)


def _score_file_once(task: FileTask) -> Receipt:
    wall0 = time.perf_counter()
    worker = get_worker()
    plugin = loaded_model(worker, task.plugin_name) if task.plugin_name else None
    storage = task.storage
    source = io.ParquetInput(task.input_url, storage)  # one open: footer here, batches below
    footer = source.footer
    keep = _keep_columns(task, footer.schema) if task.write else []
    stats: dict[str, drift.ColumnSummary] | None = {} if task.stats else None
    infer_s = 0.0
    stop = threading.Event()

    def open_writer(schema: pa.Schema) -> io.StagedWriter:
        return io.StagedWriter(task.output_url, task.staging_url, schema, storage, owner=task.run_id)

    reader = _Stage(
        source.batches(
            columns=list(dict.fromkeys([*keep, *task.plan.features])), batch_size=task.batch_size,
            row_groups=task.row_groups,
        ),
        stop,
    )
    writer = _Writer(open_writer if task.write else None, stop)
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            t0 = time.perf_counter()
            preds: dict[str, pa.Array] = {}
            try:
                if plugin is not None:
                    assert plugin.model is not None
                    feeds, preds = scoring.predict(batch, task.plan, plugin.model, task.prefix)
                else:
                    feeds = scoring.batch_to_feeds(batch, task.plan)
            except BatchserveError as exc:
                exc.path = exc.path or task.input_url
                raise
            infer_s += time.perf_counter() - t0
            scored = scoring.assemble(batch, keep, preds) if task.write and plugin is not None else None
            # Drift statistics run on the writer thread, overlapping the next inference.
            job = functools.partial(scoring.merge_statistics, stats, batch, task.plan, feeds, preds) if (
                stats is not None) else None
            if scored is not None or job is not None:
                writer.put(scored, job)
        writer.finish()
    except BaseException:
        stop.set()
        if writer.writer is not None:
            writer.writer.abort()
        raise
    size, checksum, committed, output_url = 0, None, False, ""
    rows = footer.num_rows if task.row_groups is None else sum(footer.row_group_rows[g] for g in task.row_groups)
    write_s = writer.stats_seconds
    if task.write:
        staged = writer.writer
        if staged is None:  # 0 rows: still write a valid file with the output schema
            assert plugin is not None and plugin.prediction_schema is not None
            staged = open_writer(
                scoring.output_schema(footer.schema, keep, plugin.prediction_schema).remove_metadata()
            )
        t0 = time.perf_counter()
        if task.piece is None:
            size, checksum = staged.commit(commit_fence(task.run_id))
            committed, output_url = True, task.output_url
        else:
            size, output_url = staged.close_staged(), task.staging_url
        rows = staged.rows
        write_s = writer.seconds + time.perf_counter() - t0
    return Receipt(
        input_url=task.input_url,
        relpath=task.relpath,
        output_url=output_url,
        rows=rows,
        bytes=size,
        read_s=round(reader.seconds, 6),
        infer_s=round(infer_s, 6),
        write_s=round(write_s, 6),
        wall_s=round(time.perf_counter() - wall0, 6),
        worker=worker.address,
        committed=committed,
        piece=task.piece,
        stats=stats,
        checksum=checksum,
    )


def merge_pieces(
    final_url: str, staging_url: str, storage_options: tuple[tuple[str, str], ...], run_id: str, *pieces: Receipt
) -> Receipt:
    """Concatenate a split file's pieces, in order, into one committed output file."""
    wall0 = time.perf_counter()
    storage = storage_dict(storage_options)
    ordered = sorted(pieces, key=lambda r: r.piece or 0)
    read_s = write_s = 0.0
    writer: io.StagedWriter | None = None
    try:
        for piece in ordered:
            source = io.ParquetInput(piece.output_url, storage)
            if writer is None:
                writer = io.StagedWriter(final_url, staging_url, source.footer.schema.remove_metadata(), storage,
                                         owner=run_id)
            batches = source.batches(columns=None, batch_size=65_536)
            while True:  # streamed: a piece is never held whole in memory
                t0 = time.perf_counter()
                b = next(batches, None)
                t1 = time.perf_counter()
                read_s += t1 - t0
                if b is None:
                    break
                writer.write(b)
                write_s += time.perf_counter() - t1
        assert writer is not None
        size, checksum = writer.commit(commit_fence(run_id))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    for piece in ordered:
        io.remove(piece.output_url, storage)
    return Receipt(
        input_url=ordered[0].input_url,
        relpath=ordered[0].relpath,
        output_url=final_url,
        rows=writer.rows,
        bytes=size,
        read_s=round(sum(p.read_s for p in ordered) + read_s, 6),
        infer_s=round(sum(p.infer_s for p in ordered), 6),
        write_s=round(sum(p.write_s for p in ordered) + write_s, 6),
        wall_s=round(sum(p.wall_s for p in ordered) + time.perf_counter() - wall0, 6),
        worker=get_worker().address,
        committed=True,
        stats=None if ordered[0].stats is None else drift.merge_maps(p.stats for p in ordered if p.stats is not None),
        checksum=checksum,
    )

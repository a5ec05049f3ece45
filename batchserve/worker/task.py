"""The per-file task: read (streamed row groups), infer, write under a staging name, commit; a
receipt back, never data. A large file's pieces are scored apart and merged in order.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchserve import compare, drift, io, scoring
from batchserve.errors import BatchserveError, DataError, WorkerStateError, located
from batchserve.worker.commit import commit_fence, commits_stopped
from batchserve.worker.context import RowReporter, current_worker
from batchserve.worker.plugin import WorkerModel, loaded_model
from batchserve.worker.shadow import ChallengerTask, Shadow
from batchserve.worker.stages import Stage, Writer
from batchserve.worker.statistics import BatchStatistics

if TYPE_CHECKING:
    from batchserve.model import LoadedModel

__all__ = ["FileTask", "Receipt", "score_file", "score_bundle", "merge_pieces"]


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
    #: A challenger scored beside the model in the same pass (shadow scoring).
    challenger: ChallengerTask | None = None
    #: The input's size and version (mtime or etag) when the run planned it: checked before the commit.
    input_size: int | None = None
    input_version: str | None = None
    #: Stamped in the committed file's footer (JSON: the run's fingerprint, the input's size and version).
    record: str | None = None

    @property
    def storage(self) -> dict[str, Any]:
        return io.storage_of(self.storage_options)


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
    #: The challenger's committed file (same input, its own output) and how it compares.
    challenger: Receipt | None = None
    comparisons: dict[str, compare.Comparison] | None = None
    #: Why the challenger failed on this file (its file was not committed; this one was).
    challenger_error: str | None = None


def _keep_columns(task: FileTask, schema: pa.Schema) -> list[str]:
    return list(schema.names) if task.keep is None else list(task.keep)


def score_file(task: FileTask) -> Receipt:
    """Score one file (or piece), stage it, and commit it unless it is a piece.

    Transient errors (storage hiccups, object-store 5xx) are retried here with
    exponential backoff and jitter, ``task.retries`` times; data errors are not.
    A retry rewrites the same staging name, so a half-written attempt is replaced,
    never committed. With ``task.write`` false (profiling) it only reads and summarises.
    """
    receipt, stats = _score_file(task)
    return receipt if stats is None else dataclasses.replace(receipt, stats=stats.finish())


def _score_file(task: FileTask) -> tuple[Receipt, BatchStatistics | None]:
    """:func:`score_file` with the drift statistics still open (a bundle folds them into its own)."""
    attempts = 0

    def attempt() -> tuple[Receipt, BatchStatistics | None]:
        nonlocal attempts
        attempts += 1
        return _score_file_once(task)

    receipt, stats = io.with_retries(attempt, task.retries)
    return dataclasses.replace(receipt, attempts=attempts), stats


def score_bundle(tasks: tuple[FileTask, ...], keep_going: bool) -> list[Receipt | BatchserveError]:
    """Several small files in one task, one after another, each still staged and committed on its
    own (one output per input, the per-file commit). What a task costs beyond its files (dispatch,
    a scheduler round trip, a result message, a wake-up of the client) is then paid once per bundle,
    not once per 500-row file: hourly partitions and streaming sinks write exactly such files.

    A file's error is returned in its place, so the files committed before it keep their receipts;
    without ``keep_going`` (``--on-error fail``) the rest of the bundle is not started.
    """
    results: list[Receipt | BatchserveError] = []
    # One summary per bundle, of the committed files only: ~90 KB less per receipt to ship and merge,
    # and the statistics of many small files summarised together (see worker/statistics.py).
    merged: BatchStatistics | None = None
    last = -1
    for task in tasks:
        if commits_stopped(task.run_id):  # the run stopped: none of the rest could commit
            break
        try:
            receipt, stats = _score_file(task)
        except BatchserveError as exc:
            results.append(exc)
            if not keep_going:
                break
            continue
        if stats is not None:
            merged = merged or BatchStatistics(task.plan, task.batch_size)
            merged.absorb(stats)
        results.append(receipt)
        last = len(results) - 1
    if merged is not None and last >= 0:
        done = results[last]
        assert isinstance(done, Receipt)
        results[last] = dataclasses.replace(done, stats=merged.finish())
    return results


def _score_file_once(task: FileTask) -> tuple[Receipt, BatchStatistics | None]:
    wall0 = time.perf_counter()
    worker = current_worker()
    plugin = loaded_model(worker, task.plugin_name) if task.plugin_name else None
    source = io.ParquetInput(task.input_url, task.storage)  # one open: footer here, batches below
    footer = source.footer
    keep = _keep_columns(task, footer.schema) if task.write else []
    stats = BatchStatistics(task.plan, task.batch_size) if task.stats else None
    stop = threading.Event()
    shadow = None if task.challenger is None else Shadow(
        task.challenger, loaded_model(worker, task.challenger.plugin_name), footer.schema.names, task.run_id,
        task.storage, stop,
    )
    columns = [*keep, *task.plan.features, *(shadow.columns if shadow else [])]
    # One batch has nothing to overlap: read, infer and write it in this thread (small files).
    overlap = footer.num_rows > task.batch_size
    batches: Iterator[Any] = source.batches(columns=list(dict.fromkeys(columns)), batch_size=task.batch_size,
                                            row_groups=task.row_groups, use_threads=overlap)
    if overlap and plugin is not None and plugin.model is not None and plugin.model.binder is not None:
        batches = _on_device(batches, task, plugin.model)
    reader = Stage(batches, stop, threaded=overlap)
    writer = Writer(functools.partial(_open_writer, task) if task.write else None, stop, threaded=overlap)
    infer_s = _run_batches(task, plugin, keep, stats, reader, writer, stop, shadow)
    rows = footer.num_rows if task.row_groups is None else sum(footer.row_group_rows[g] for g in task.row_groups)
    size, checksum, output_url, write_s = 0, None, "", writer.stats_seconds
    if task.write:
        _check_unchanged(task)
        rows, size, checksum, output_url, write_s = _commit(task, plugin, footer, keep, writer)
    return Receipt(
        input_url=task.input_url, relpath=task.relpath, output_url=output_url, rows=rows, bytes=size,
        read_s=round(reader.seconds, 6), infer_s=round(infer_s, 6), write_s=round(write_s, 6),
        wall_s=round(time.perf_counter() - wall0, 6), worker=worker.address,
        committed=task.write and task.piece is None, piece=task.piece, checksum=checksum,
        **(_commit_shadow(task, shadow, footer, output_url) if shadow is not None else {}),
    ), stats


def _commit_shadow(task: FileTask, shadow: Shadow, footer: io.Footer, champion_url: str) -> dict[str, Any]:
    """Commit the challenger's file after the champion's. A challenger that failed on this file, or
    whose commit fails, is recorded (``challenger_error``) and the champion's committed file stays:
    the champion's output is exactly what a run without --challenger writes. A run stopped meanwhile
    (the commit fence) still stops the task, and takes the champion's file back so a stopped task
    leaves neither (the interrupted manifest lists exactly what is on disk)."""
    assert task.challenger is not None
    if shadow.error is None:
        try:
            rows, size, checksum = shadow.commit(footer.schema)
        except WorkerStateError:
            io.remove(champion_url, task.storage)
            raise
        except BatchserveError as exc:
            shadow.fail(exc)
    if shadow.error is not None:
        return {"challenger_error": shadow.error}
    receipt = Receipt(
        input_url=task.input_url, relpath=task.relpath, output_url=task.challenger.output_url, rows=rows,
        bytes=size, read_s=0.0, infer_s=round(shadow.infer_s, 6), write_s=round(shadow.writer.seconds, 6),
        wall_s=0.0, worker="", committed=True, checksum=checksum,
    )
    return {"challenger": receipt, "comparisons": shadow.comparisons}


def _on_device(batches: Iterator[pa.RecordBatch], task: FileTask, loaded: LoadedModel) -> Iterator[Any]:
    """A GPU session's batches with their features built and copied to the device on the reader
    thread (``(batch, (feeds, device feeds))``), so the copy overlaps the previous batch's run."""
    for batch in batches:
        if batch.num_rows:  # an empty batch has nothing to score
            with located(task.input_url):
                feeds = scoring.batch_to_feeds(batch, task.plan)
            yield batch, (feeds, loaded.prepare(feeds))


def _open_writer(task: FileTask, schema: pa.Schema) -> io.StagedWriter:
    return io.StagedWriter(task.output_url, task.staging_url, schema, task.storage, owner=task.run_id,
                           record=task.record if task.piece is None else None)


def _check_unchanged(task: FileTask) -> None:
    """The input must still be the file the run planned: rewritten in place meanwhile (a retry re-reads
    it), the output would hold content the manifest's recorded size and version do not describe."""
    if task.input_size is None:
        return
    size, version = io.input_version(task.input_url, task.storage)
    if size != task.input_size or not io.same_version(version, task.input_version):
        raise DataError(
            f"input file changed while the run was scoring it (size {task.input_size} -> {size}, version "
            f"{task.input_version} -> {version}); nothing of it was committed: re-run to score its new content",
            path=task.input_url,
        )


def _run_batches(
    task: FileTask, plugin: WorkerModel | None, keep: list[str], stats: BatchStatistics | None,
    reader: Stage, writer: Writer, stop: threading.Event, shadow: Shadow | None = None,
) -> float:
    """The inference loop (this thread), between the reader and writer threads; returns its seconds."""
    infer_s = 0.0
    rows = RowReporter(task.run_id, f"{task.relpath}#{task.piece}")
    try:
        for item in reader:
            batch, ready = item if isinstance(item, tuple) else (item, None)
            if batch.num_rows == 0:
                continue
            rows.add(batch.num_rows)
            t0 = time.perf_counter()
            preds: dict[str, pa.Array] = {}
            with located(task.input_url):
                if plugin is not None:
                    assert plugin.model is not None  # ready: features built and on the device (_on_device)
                    feeds, preds = scoring.predict(batch, task.plan, plugin.model, task.prefix, ready)
                else:
                    feeds = scoring.batch_to_feeds(batch, task.plan)
            infer_s += time.perf_counter() - t0
            scored = scoring.assemble(batch, keep, preds) if task.write and plugin is not None else None
            # Drift statistics run on the writer thread, overlapping the next inference.
            job = functools.partial(stats.add, batch, feeds, preds) if stats is not None else None
            if scored is not None or job is not None:
                writer.put(scored, job)
            if shadow is not None:  # the same batch and feature arrays: no second read or decode
                shadow.score(batch, feeds, preds, task.prefix, task.input_url)
        writer.finish()
        if shadow is not None and shadow.error is None:
            try:
                shadow.writer.finish()
            except BatchserveError as exc:  # its file failed to write: the champion's is unaffected
                shadow.fail(exc)
    except BaseException:
        stop.set()
        if writer.writer is not None:
            writer.writer.abort()
        if shadow is not None:
            shadow.abort()
        raise
    return infer_s


def _commit(
    task: FileTask, plugin: WorkerModel | None, footer: io.Footer, keep: list[str], writer: Writer
) -> tuple[int, int, str | None, str, float]:
    """Finish the staged file: commit it (a whole file) or leave it staged (a piece for the merge).
    Returns rows, bytes, checksum, where it is, and the write seconds."""
    staged = writer.writer
    if staged is None:  # 0 rows: still write a valid file with the output schema
        assert plugin is not None and plugin.prediction_schema is not None
        staged = _open_writer(task, scoring.output_schema(footer.schema, keep, plugin.prediction_schema)
                              .remove_metadata())
    t0 = time.perf_counter()
    checksum: str | None = None
    if task.piece is None:
        size, checksum = staged.commit(commit_fence(task.run_id))
        output_url = task.output_url
    else:
        size, output_url = staged.close_staged(), task.staging_url
    return staged.rows, size, checksum, output_url, writer.seconds + time.perf_counter() - t0


def merge_pieces(
    final_url: str, staging_url: str, storage_options: tuple[tuple[str, str], ...], run_id: str,
    record: str | None, *pieces: Receipt,
) -> Receipt:
    """Concatenate a split file's pieces, in order, into one committed output file."""
    wall0 = time.perf_counter()
    storage = io.storage_of(storage_options)
    ordered = sorted(pieces, key=lambda r: r.piece or 0)
    read_s = write_s = 0.0
    writer: io.StagedWriter | None = None
    try:
        for piece in ordered:
            source = io.ParquetInput(piece.output_url, storage)
            if writer is None:
                writer = io.StagedWriter(final_url, staging_url, source.footer.schema.remove_metadata(), storage,
                                         owner=run_id, record=record)
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
        worker=current_worker().address,
        committed=True,
        stats=None if ordered[0].stats is None else drift.merge_maps(p.stats for p in ordered if p.stats is not None),
        checksum=checksum,
    )

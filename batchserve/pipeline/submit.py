"""Tasks in, receipts out: one task per input file (a large file split by row groups and merged),
collected as they finish, and, when the run stops early, the commit fence closed on every worker
so the receipts hold exactly what was committed."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from batchserve import io, layout, manifest
from batchserve.config import ScoreConfig
from batchserve.errors import BatchserveError, ClusterError
from batchserve.pipeline import cluster
from batchserve.pipeline.output import owners
from batchserve.pipeline.plan import RunPlan, fingerprint
from batchserve.pipeline.progress import ProgressEvent
from batchserve.worker import (
    ChallengerTask,
    FileTask,
    ModelSpec,
    Receipt,
    merge_pieces,
    score_bundle,
    score_file,
    stop_commits,
)
from batchserve.worker.context import progress_topic

if TYPE_CHECKING:
    from batchserve.pipeline.cluster import TaskClient

__all__ = ["ProgressEvent", "Submission", "pieces", "submit_all", "results_of", "BUNDLE_MAX_FILES"]

#: At most this many files per bundle task: enough to amortise a task's fixed cost (~5 ms), few
#: enough that progress and a stopped run's bookkeeping stay fine-grained.
BUNDLE_MAX_FILES = 256

log = logging.getLogger("batchserve")


def pieces(footer: io.Footer, target_rows: int) -> list[tuple[int, ...]] | None:
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


def submit_all(
    client: TaskClient, cfg: ScoreConfig, plan: RunPlan, spec: ModelSpec | None, run_id: str, n_workers: int,
    write: bool = True, skip_relpaths: frozenset[str] = frozenset(), challenger: ModelSpec | None = None,
) -> dict[Any, tuple[str, ...]]:
    """Futures mapped to the relpaths of the files they score: one per large file (a merge future for
    a split file), one per bundle of small files.

    With a challenger, files are not split: each task writes both models' files for its input."""
    storage_pairs = cfg.storage_options
    # stamped in each committed file's footer, for a later --resume (profiling writes no file, may have no model)
    digest = fingerprint(cfg, plan) if write else None
    target = cfg.split_rows or max(4 * cfg.batch_size, math.ceil(plan.rows / max(1, 2 * n_workers)))
    # Small files travel in bundles: enough bundles for every worker to get several, each at most a batch
    # or two of rows, so load balance and progress stay as they were while per-task costs are shared.
    bundle_rows = max(1, min(2 * cfg.batch_size, math.ceil(plan.rows / max(1, 4 * n_workers))))
    futures: dict[Any, tuple[str, ...]] = {}
    small: list[FileTask] = []
    small_rows = 0

    def flush() -> None:
        nonlocal small_rows
        small_rows = 0
        if not small:
            return
        if len(small) == 1:
            futures[client.submit(score_file, small[0], key=f"score-{run_id}-{small[0].relpath}",
                                  pure=False)] = (small[0].relpath,)
        else:
            futures[client.submit(score_bundle, tuple(small), cfg.on_error == "skip",
                                  key=f"bundle-{run_id}-{small[0].relpath}", pure=False)] = tuple(
                t.relpath for t in small)
        small.clear()

    for part, footer in zip(plan.partitions, plan.footers, strict=True):
        if part.relpath in skip_relpaths:
            continue
        final = io.join_url(cfg.output, part.relpath)
        staging = io.join_url(cfg.output, io.STAGING_DIR, run_id, layout.staging_name(part.relpath))
        base = FileTask(
            run_id=run_id, input_url=part.url, relpath=part.relpath, output_url=final,
            staging_url=staging, keep=cfg.keep, batch_size=cfg.batch_size,
            plugin_name=spec.plugin_name if spec else None, plan=plan.features, prefix=cfg.prefix,
            storage_options=storage_pairs, stats=cfg.drift, write=write, retries=cfg.retries,
            challenger=_challenger_task(cfg, plan, challenger, run_id, part.relpath),
            input_size=part.size, input_version=part.version,
            record=json.dumps({"fingerprint": digest, "input_size": part.size, "input_version": part.version})
            if write else None,
        )
        ranges = pieces(footer, target) if write and challenger is None else None
        if ranges is None and footer.num_rows < bundle_rows:
            small.append(base)
            small_rows += footer.num_rows
            if small_rows >= bundle_rows or len(small) >= BUNDLE_MAX_FILES:
                flush()
            continue
        flush()
        if ranges is None:
            futures[client.submit(score_file, base, key=f"score-{run_id}-{part.relpath}", pure=False)] = (
                part.relpath,)
            continue
        piece_futures = []
        for k, groups in enumerate(ranges):
            piece_staging = f"{staging}.piece-{k:05d}"
            task = dataclasses.replace(base, staging_url=piece_staging, row_groups=groups, piece=k)
            piece_futures.append(
                client.submit(score_file, task, key=f"score-{run_id}-{part.relpath}-p{k}", pure=False)
            )
        merged = client.submit(
            merge_pieces, final, staging, storage_pairs, run_id, base.record, *piece_futures,
            key=f"merge-{run_id}-{part.relpath}", pure=False,
        )
        futures[merged] = (part.relpath,)
    flush()
    return futures


def results_of(value: Any) -> list[Receipt | BatchserveError]:
    """A finished task's results: a bundle's list, or one file's receipt."""
    return list(value) if isinstance(value, list) else [value]


def _challenger_task(
    cfg: ScoreConfig, plan: RunPlan, spec: ModelSpec | None, run_id: str, rel: str
) -> ChallengerTask | None:
    if spec is None or plan.challenger is None or cfg.challenger_output is None:
        return None
    out = cfg.challenger_output
    return ChallengerTask(
        plugin_name=spec.plugin_name, plan=plan.challenger.features,
        same_features=plan.challenger.same_features_as(plan.features),
        output_url=io.join_url(out, rel),
        staging_url=io.join_url(out, io.STAGING_DIR, run_id, layout.staging_name(rel)),
        keep=plan.challenger.keep,
    )


def stop_commits_everywhere(client: TaskClient, run_id: str) -> None:
    """Close the commit fence on every worker: once this returns, no task of the run moves a file
    into place, and none is in the middle of doing so."""
    try:
        done = client.run(stop_commits, run_id, on_error="return")
    except Exception as exc:  # noqa: BLE001 - already failing; the output is settled file by file below
        log.warning("could not stop commits on every worker (%s); the output is checked file by file", exc)
        return
    if not all(v is True for v in done.values()):
        log.warning("some workers did not confirm the stop; the output is checked file by file")


def settle_in_flight(
    cfg: ScoreConfig, futures: Mapping[Any, tuple[str, ...]], receipts: list[Receipt], run_id: str, *, wait: bool
) -> None:
    """Account for files committed just before the fence closed, whose receipts are still on their way.

    They carry this run's stamp. Each is waited for briefly (``wait``) and recorded; one whose
    receipt never comes is removed, so the manifest lists exactly the files on disk.
    """
    done = {r.relpath for r in receipts if r.committed}
    pending = {rel: fut for fut, rels in futures.items() for rel in rels if rel not in done}
    if not pending:
        return
    found = io.output_files(cfg.output, cfg.storage)
    by_owner = owners(cfg, [rel for rel in pending if rel in found])
    for rel, owner in by_owner.items():
        if owner != run_id:
            continue  # an earlier run's file, untouched by this one
        receipt = None
        if wait:
            try:
                receipt = next((r for r in results_of(pending[rel].result(timeout=10))
                                if isinstance(r, Receipt) and r.relpath == rel), None)
            except Exception:  # noqa: BLE001 - whatever went wrong, the file is not accounted for
                receipt = None
        if isinstance(receipt, Receipt) and receipt.committed:
            receipts.append(receipt)
            continue
        io.remove(io.join_url(cfg.output, rel), cfg.storage)
        log.warning("removed %s: committed as the run stopped, but its receipt never came", rel)
    if cfg.challenger_output:  # the challenger's file of a task whose receipt never came goes too
        received = {r.relpath for r in receipts}
        found2 = io.output_files(cfg.challenger_output, cfg.storage)
        stray = [rel for rel in pending if rel not in received and rel in found2]
        shadow_cfg = dataclasses.replace(cfg, output=cfg.challenger_output)
        for rel, owner in owners(shadow_cfg, stray).items():
            if owner == run_id:
                io.remove(io.join_url(cfg.challenger_output, rel), cfg.storage)


def harvest_finished(futures: list[Any], receipts: list[Receipt]) -> None:
    """On the way out, record files that finished but whose receipts were not read yet.

    They are committed on disk; listing them keeps --resume from redoing them.
    """
    seen = {(r.relpath, r.piece) for r in receipts}
    for fut in futures:
        if fut.status != "finished":
            continue
        try:
            found = results_of(fut.result(timeout=1))
        except Exception:  # noqa: BLE001, S112 - best effort while already failing
            continue
        for receipt in found:
            if isinstance(receipt, Receipt) and receipt.committed and (receipt.relpath, receipt.piece) not in seen:
                receipts.append(receipt)


class Submission:
    """One run's tasks on a cluster. ``receipts`` and ``failures`` grow as tasks finish, so a journal
    can read them mid-run; when the run stops early they hold exactly what was committed."""

    def __init__(self, cfg: ScoreConfig, plan: RunPlan, run_id: str, *, write: bool = True,
                 skip_relpaths: frozenset[str] = frozenset()) -> None:
        self.cfg, self.plan, self.run_id, self.write, self.skip = cfg, plan, run_id, write, skip_relpaths
        self.receipts: list[Receipt] = []
        self.failures: list[manifest.FailureEntry] = []
        self.engine: manifest.EngineInfo | None = None
        # Progress within files (see _in_flight): rows reported by tasks still running, by task key.
        self._progress_lock = threading.Lock()
        self._flying: dict[str, int] = {}
        self._settled: set[str] = set()
        self._rows_done = 0
        self._files_total = 0

    def run(
        self, *, with_model: bool, t0: float, on_receipt: Callable[[], None] | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        """Attach a cluster, install the model, run every task, collect receipts as they come."""
        cfg = self.cfg
        with cluster.attach(cfg, self.plan.rows, len(self.plan.partitions) - len(self.skip)) as (
                client, kind, address):
            spec: ModelSpec | None = None
            per_worker: list[manifest.WorkerInfo] = []
            challenger: ModelSpec | None = None
            if with_model:
                spec, per_worker, n_workers = cluster.install_model(client, cfg, self.plan)
                if self.plan.challenger is not None:
                    challenger = cluster.install_challenger(client, cfg, self.plan)
            else:
                n_workers = cluster.worker_count(client)
            self.engine = manifest.EngineInfo(kind, address, n_workers, cfg.device, per_worker)
            futures = submit_all(client, cfg, self.plan, spec, self.run_id, n_workers, write=self.write,
                                 skip_relpaths=self.skip, challenger=challenger)
            topic = progress_topic(self.run_id)
            if on_progress is not None:  # rows within files as they are scored, not only per committed file
                client.subscribe_topic(topic, lambda event: self._in_flight(event[1], t0, on_progress))
            try:
                self._collect(client, futures, t0, on_receipt, on_progress)
            except BaseException:
                self._stop(client, futures)
                raise
            finally:
                if on_progress is not None:
                    client.unsubscribe_topic(topic)

    def _in_flight(self, msg: Any, t0: float, on_progress: Callable[[ProgressEvent], None]) -> None:
        """A task's rows so far (an event from its worker): the bar moves within one large file."""
        if not isinstance(msg, dict) or not isinstance(msg.get("rows"), int):
            return
        with self._progress_lock:
            relpath = str(msg.get("key", "")).rsplit("#", 1)[0]
            if relpath in self._settled:  # its receipt came first: the committed count already holds it
                return
            self._flying[str(msg["key"])] = msg["rows"]
            rows = self._rows_done + sum(self._flying.values())
            files_done = len(self.receipts)
        on_progress(ProgressEvent("batch", files_done, self._files_total, min(rows, self.plan.rows), self.plan.rows,
                                  time.perf_counter() - t0))

    def _collect(
        self, client: TaskClient, futures: Mapping[Any, tuple[str, ...]], t0: float,
        on_receipt: Callable[[], None] | None, on_progress: Callable[[ProgressEvent], None] | None,
    ) -> None:
        rows_done = 0
        files_total = self._files_total = sum(len(rels) for rels in futures.values())
        for fut in cluster.as_completed(client, list(futures)):
            receipts, error = self._receipts(fut, futures[fut])
            for receipt in receipts:  # a bundle's files committed before a bad one count, then it fails
                rows_done += receipt.rows
                with self._progress_lock:  # the receipt settles what its task reported on the way
                    self._rows_done = rows_done
                    self._settled.add(receipt.relpath)
                    for key in [k for k in self._flying if k.rsplit("#", 1)[0] == receipt.relpath]:
                        del self._flying[key]
                self._record(receipt, files_total, rows_done, t0, on_receipt, on_progress)
            if error is not None:
                raise error

    def _record(
        self, receipt: Receipt, files_total: int, rows_done: int, t0: float,
        on_receipt: Callable[[], None] | None, on_progress: Callable[[ProgressEvent], None] | None,
    ) -> None:
        """One file's receipt in: the receipts list (the journal's source), its log line, progress."""
        self.receipts.append(receipt)
        if on_receipt:
            on_receipt()
        if receipt.attempts > 1:
            log.warning("%s needed %d attempts (transient errors)", receipt.relpath, receipt.attempts)
        if self.write:
            log.info("committed %s (%d rows)", receipt.output_url, receipt.rows, extra={"fields": {
                "event": "committed", "path": receipt.output_url, "rows": receipt.rows}})
        else:
            log.info("profiled %s (%d rows)", receipt.input_url, receipt.rows, extra={"fields": {
                "event": "profiled", "path": receipt.input_url, "rows": receipt.rows}})
        if on_progress:
            on_progress(ProgressEvent(
                "file", len(self.receipts), files_total, rows_done, self.plan.rows,
                time.perf_counter() - t0, receipt.output_url or receipt.input_url,
            ))

    def _receipts(self, fut: Any, rels: tuple[str, ...]) -> tuple[list[Receipt], BatchserveError | None]:
        """A finished task's receipts, in order, and the error that fails the run, if any: a bad file
        is recorded as a failure under --on-error skip, and returned otherwise (the receipts before it
        still count: those files are committed)."""
        try:
            found = results_of(fut.result())
        except BatchserveError as exc:
            found = [exc]
        except Exception as exc:
            if not cluster.workers_died(exc):
                raise
            # Dask already re-ran the task on other workers; it kept killing them.
            raise ClusterError(
                f"workers kept dying while running this file ({exc}); it may need more memory "
                "than a worker has: try a smaller --batch-size or larger workers",
            ) from None
        receipts: list[Receipt] = []
        for rel, item in zip(rels, found, strict=False):  # a failed bundle stops early: fewer results
            if isinstance(item, Receipt):
                receipts.append(item)
                continue
            if self.cfg.on_error != "skip":
                return receipts, item
            log.warning("skipping %s: %s", rel, item, extra={"fields": {"event": "skipped_file", "path": rel}})
            self.failures.append(manifest.FailureEntry(item.path or rel, rel, str(item)))
        return receipts, None

    def _stop(self, client: TaskClient, futures: Mapping[Any, tuple[str, ...]]) -> None:
        """On the way out: fence every worker, record what committed, cancel the rest, fence again
        (a worker that joined meanwhile), and remove anything committed that has no receipt."""
        if self.write:
            stop_commits_everywhere(client, self.run_id)
        harvest_finished(list(futures), self.receipts)
        if self.write:
            settle_in_flight(self.cfg, futures, self.receipts, self.run_id, wait=True)
        client.cancel(list(futures))
        if self.write:
            stop_commits_everywhere(client, self.run_id)
            settle_in_flight(self.cfg, futures, self.receipts, self.run_id, wait=False)

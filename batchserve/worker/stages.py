"""A task's three overlapping stages: reading and writing run on their own threads, joined to the
inference loop by bounded queues (pyarrow and onnxruntime release the GIL), so memory stays at
about ``batch_size x (2 * QUEUE_DEPTH + 3)`` rows whatever the file size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from batchserve import io

__all__ = ["QUEUE_DEPTH", "Stage", "Writer"]


QUEUE_DEPTH = 2


DONE = object()


class Stage:
    """A daemon thread pulling from a source into a bounded queue, keeping its own time.

    ``threaded=False`` reads in the consumer's thread instead: for a file of one batch there is
    nothing to overlap, and a thread and its queue hand-offs cost more than they save (small files).
    """

    def __init__(self, source: Iterator[Any], stop: threading.Event, *, threaded: bool = True) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._source = source
        self._stop = stop
        self.threaded = threaded
        self.thread = threading.Thread(target=self._run, daemon=True)
        if threaded:
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
            for item in self._timed():
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.error = exc
        self._put(DONE)

    def _timed(self) -> Iterator[Any]:
        """The source's items until it ends or the task stops, its time kept in ``seconds``."""
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                item = next(self._source)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - t0
            yield item

    def __iter__(self) -> Iterator[Any]:
        if not self.threaded:
            yield from self._timed()
            return
        while True:
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                # Stopped by another stage (the writer failed): this thread gives up without putting
                # DONE, so waiting on the queue alone would hang the task forever (seen on a full disk).
                if self._stop.is_set() and not self.thread.is_alive() and self.q.empty():
                    if self.error is not None:
                        raise self.error from None
                    return
                continue
            if item is DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item


class Writer:
    """Consumes scored batches on its own thread so encoding (and drift statistics) overlap
    the next inference. Items are ``(batch or None, side job or None)``."""

    def __init__(self, open_writer: Callable[[pa.Schema], io.StagedWriter] | None, stop: threading.Event,
                 *, threaded: bool = True) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.seconds = 0.0
        self.stats_seconds = 0.0
        self.error: BaseException | None = None
        self.writer: io.StagedWriter | None = None
        self._open = open_writer
        self._stop = stop
        self.threaded = threaded
        self.thread = threading.Thread(target=self._run, daemon=True)
        if threaded:
            self.thread.start()

    def _handle(self, item: tuple[pa.RecordBatch | None, Callable[[], None] | None]) -> None:
        batch, side_job = item
        if side_job is not None:  # drift statistics overlap the next inference
            t1 = time.perf_counter()
            side_job()
            self.stats_seconds += time.perf_counter() - t1
        if batch is None:
            return
        t0 = time.perf_counter()
        if self.writer is None:
            assert self._open is not None
            self.writer = self._open(batch.schema)
        self.writer.write(batch)
        self.seconds += time.perf_counter() - t0

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is DONE:
                    return
                self._handle(item)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._stop.set()
            while True:  # drain so the producer never blocks on a dead consumer
                try:
                    if self.q.get(timeout=0.1) is DONE:
                        return
                except queue.Empty:
                    return

    def put(self, batch: pa.RecordBatch | None, side_job: Callable[[], None] | None = None) -> None:
        if not self.threaded:
            try:
                self._handle((batch, side_job))
            except BaseException as exc:
                self.error = exc
                self._stop.set()
                raise
            return
        while self.error is None:
            try:
                self.q.put((batch, side_job), timeout=0.1)
                return
            except queue.Full:
                continue
        raise self.error

    def finish(self) -> None:
        if not self.threaded:
            if self.error is not None:
                raise self.error
            return
        while self.thread.is_alive():  # a consumer that died on an error no longer takes from the queue
            try:
                self.q.put(DONE, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()
        if self.error is not None:
            raise self.error

"""Dynamic batching: concurrent requests merged into one inference call and the answers split back.

Requests queue (bounded, in rows: past ``max_queue_rows`` a request is refused with 503 at once,
never held in unbounded memory). While the model is idle the first request runs at once, after
``max_queue_delay_us`` if that is set; requests that arrive while a batch runs are merged into the
next call, up to ``max_batch_rows`` rows (a request is never split). So one client alone pays no
wait, and under load the batch grows with the load: Triton's dynamic batcher with a zero delay.
Each request gets its own rows of the batch's predictions (numpy views, no copy).

A small batch (``inline_rows`` rows or fewer) runs on the event loop's own thread: handing it to a
worker thread and back costs more than the inference of a few rows (make bench-serve: one row's p50
0.62 -> 0.3 ms). A larger one runs on a worker thread: ONNX Runtime releases the GIL, so the event
loop keeps reading and parsing the next requests meanwhile, and those form the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from batchserve.errors import RequestError
from batchserve.predictions import Prediction

__all__ = ["Batcher", "BatchStats"]

#: Runs the model on ``feeds`` of ``n`` rows and returns the prediction columns.
RunFn = Callable[[Mapping[str, np.ndarray], int], Mapping[str, Prediction]]


@dataclasses.dataclass
class _Pending:
    feeds: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future[Mapping[str, Prediction]]
    tag: Any = None


#: Told about every answered batch (the requests' tags, the feeds, the predictions), on the event loop,
#: after the answers are set: it must only hand them on (see :mod:`batchserve.online.tap`).
AnswerHook = Callable[[list[Any], Mapping[str, np.ndarray], Mapping[str, Prediction]], None]


class BatchStats:
    """What a batch did, for metrics: rows, requests and seconds of inference."""

    def observe(self, rows: int, requests: int, seconds: float) -> None:  # pragma: no cover - interface
        """Called once per batch, on the event loop."""


class Batcher:
    """The bounded queue in front of one loaded model."""

    def __init__(self, run: RunFn, executor: concurrent.futures.Executor, *, max_batch_rows: int,
                 max_queue_rows: int, max_delay_us: int = 0, inline_rows: int = 0,
                 stats: BatchStats | None = None, on_answer: AnswerHook | None = None) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_queue_rows = max_queue_rows
        self._delay = max_delay_us / 1e6
        self.inline_rows = inline_rows
        self._stats = stats or BatchStats()
        self._on_answer = on_answer
        self._queue: collections.deque[_Pending] = collections.deque()
        self.queued_rows = 0
        self._running: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, feeds: Mapping[str, np.ndarray], rows: int, tag: Any = None) -> Mapping[str, Prediction]:
        """This request's prediction columns, computed in a batch with whatever else is waiting."""
        if self.queued_rows + rows > self.max_queue_rows:
            raise RequestError(f"the queue is full ({self.queued_rows:,} rows waiting); retry shortly", status=503)
        future: asyncio.Future[Mapping[str, Prediction]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(feeds, rows, future, tag))
        self.queued_rows += rows
        if self._running is None:
            self._idle.clear()
            self._running = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def drained(self) -> None:
        """Returns once every queued request has its answer (a swapped-out model's last batch ran)."""
        await self._idle.wait()

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_rows:
            item = self._queue.popleft()
            rows += item.rows
            batch.append(item)
        self.queued_rows -= rows
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self._delay and self.queued_rows < self.max_batch_rows:
                    await asyncio.sleep(self._delay)
                batch = self._take()
                feeds, rows = _merge(batch)
                start = time.perf_counter()
                try:
                    if rows <= self.inline_rows:
                        columns = self._run(feeds, rows)
                    else:
                        columns = await loop.run_in_executor(self._executor, self._run, feeds, rows)
                except BaseException as exc:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._stats.observe(rows, len(batch), time.perf_counter() - start)
                _split(batch, columns)
                if self._on_answer is not None:
                    self._on_answer([p.tag for p in batch], feeds, columns)
        finally:
            self._running = None
            self._idle.set()


def _merge(batch: list[_Pending]) -> tuple[Mapping[str, np.ndarray], int]:
    rows = sum(p.rows for p in batch)
    if len(batch) == 1:
        return batch[0].feeds, rows
    names = batch[0].feeds.keys()
    return {k: np.concatenate([p.feeds[k] for p in batch]) for k in names}, rows


def _split(batch: list[_Pending], columns: Mapping[str, Prediction]) -> None:
    offset = 0
    for p in batch:
        if not p.future.done():  # a request whose client went away has a cancelled future
            p.future.set_result(columns if len(batch) == 1 else
                                {k: v.rows(offset, p.rows) for k, v in columns.items()})
        offset += p.rows

"""After the answer: what the server does with the rows it answered, on one thread of its own and
never on a request's path: the challenger scores them (online shadow), live drift summarises them,
and the request log buffers them.

The batcher hands each answered batch over with one append to a bounded queue (rows, not batches:
``capacity_rows``; the thread takes all of it at once, so it holds at most that many rows more while it
works through them); past it the oldest batches are dropped and counted
(``batchserve_serve_tap_dropped_rows_total``): a slow challenger or a burst costs the shadow and the
statistics some rows, never a request its latency.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from batchserve import predictions, scoring
from batchserve.online.capture import RequestLog
from batchserve.online.live_drift import LiveDrift
from batchserve.online.shadow import OnlineShadow
from batchserve.online.telemetry import Telemetry

__all__ = ["Answered", "Tap", "log_columns"]

log = logging.getLogger("batchserve.serve")
_WARN_EVERY = 60.0
#: Rows processed together after the answer (answered batches are merged up to this).
_CHUNK_ROWS = 8192
#: Seconds a chunk may wait to fill before it is processed anyway.
_GATHER = 0.05


@dataclasses.dataclass(frozen=True)
class Answered:
    """One answered batch: who asked (request id, when, rows, whether sampled for the log), what the
    model saw and what it answered."""

    version: str | None
    requests: tuple[tuple[str, int, int, bool], ...]
    feeds: Mapping[str, np.ndarray]
    preds: Mapping[str, predictions.Prediction]

    @functools.cached_property
    def rows(self) -> int:
        return sum(r[2] for r in self.requests)


def _merged(items: list[Answered]) -> Answered:
    """Answered batches of one model version as one."""
    if len(items) == 1:
        return items[0]
    first = items[0]
    feeds = {k: np.concatenate([a.feeds[k] for a in items]) for k in first.feeds}
    preds = {k: predictions.Prediction(np.concatenate([a.preds[k].values for a in items]), p.labels)
             for k, p in first.preds.items()}
    return Answered(first.version, tuple(r for a in items for r in a.requests), feeds, preds)


def log_columns(plan: scoring.FeaturePlan, prediction_names: list[str], challenger_schema: pa.Schema | None,
                ) -> list[str]:
    """The names of a request log row's columns, in order (:meth:`Tap._log_rows` makes them)."""
    names = ["request_id", "received_at", "model_version", *(c for b in plan.bindings for c in b.columns),
             *prediction_names]
    if challenger_schema is not None:
        names += ["challenger_version", *("challenger_" + f.name for f in challenger_schema)]
    return names


def _chunks(queued: Iterable[Answered]) -> Iterator[tuple[list[Answered], int]]:
    """Consecutive answered batches cut into chunks of at most ``_CHUNK_ROWS`` rows (a batch larger than that
    is a chunk of its own) and one model version each (a swap starts a new chunk), with their rows."""
    taken: list[Answered] = []
    rows = 0
    for a in queued:
        if taken and (rows + a.rows > _CHUNK_ROWS or a.version != taken[0].version):
            yield taken, rows
            taken, rows = [], 0
        taken.append(a)
        rows += a.rows
    if taken:
        yield taken, rows


class Tap:
    """The bounded queue and the thread behind it."""

    def __init__(self, plan: scoring.FeaturePlan, telemetry: Telemetry, *, capacity_rows: int,
                 log_sample: float = 1.0, request_log: RequestLog | None = None, live: LiveDrift | None = None,
                 shadow: OnlineShadow | None = None, challenger_schema: pa.Schema | None = None) -> None:
        self.plan = plan
        self.telemetry = telemetry
        self.capacity_rows = capacity_rows
        self.log_sample = log_sample
        self.request_log = request_log
        self.live = live
        self.shadow = shadow
        self._challenger_schema = challenger_schema
        self._queue: collections.deque[Answered] = collections.deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._warned = 0.0
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name="batchserve-after-answer", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether the next request goes to the log (decided per request, on the event loop)."""
        return self.log_sample >= 1 or self._rng.random() < self.log_sample

    def put(self, answered: Answered) -> None:
        """Called on the event loop: one append, never a wait."""
        dropped = 0
        with self._cond:
            self._queue.append(answered)
            self._rows += answered.rows
            while self._rows > self.capacity_rows and len(self._queue) > 1:
                old = self._queue.popleft()
                self._rows -= old.rows
                dropped += old.rows
            if len(self._queue) == 1 or self._rows >= _CHUNK_ROWS:  # wake the thread only when it has work
                self._cond.notify()
        if dropped:
            self.telemetry.tap_dropped.inc(dropped)
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.warning("dropped %d answered row(s) before the challenger, live drift and the request log saw "
                            "them (they fall behind the traffic)", dropped,
                            extra={"fields": {"event": "tap_dropped", "rows": dropped}})

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # Let a chunk gather (up to _GATHER seconds): per pass, the Python around the arrays
                # costs the same for 1 row or 8,000, and it holds the GIL the event loop needs.
                deadline = time.monotonic() + _GATHER
                while self._rows < _CHUNK_ROWS and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                # Everything queued, taken with one swap: the event loop's put() waits on this lock, so
                # nothing slower than that happens under it (popping thousands of batches one by one here
                # stalled the answers).
                queued, self._queue = self._queue, collections.deque()
                rows, self._rows = self._rows, 0
            if self._shadow_only() and self.shadow is not None and self.shadow.budget.rows(rows) == 0:
                self.shadow.skip(rows)  # only the shadow wants these, and its budget pays for none: counted
                continue
            for taken, n in _chunks(queued):
                self._pass(taken, n)

    def _pass(self, taken: list[Answered], rows: int) -> None:
        shadow_only = self._shadow_only()
        if shadow_only and self.shadow is not None:
            # Only the shadow wants these rows: merge and convert only the answered batches its budget
            # pays for (a random pick of them), and count the rest. That Python holds the GIL the event
            # loop needs; merging a whole chunk to score a few rows of it cost the answers' p99.
            taken = self._affordable(taken, rows)
            if not taken:
                return
        try:
            # Everything waiting in one pass: one challenger run, one log table, one summary buffer
            # entry for many small batches. Per batch, the Python around them cost the server half its
            # throughput under load (make bench-serve, the request-log case). With only the shadow on,
            # the whole pass is the shadow's, and its budget pays for all of it.
            self.process(_merged(taken), started=time.perf_counter() if shadow_only else None)
        except Exception as exc:
            log.error("after-answer processing failed: %s: %s", type(exc).__name__,
                      " ".join(str(exc).split())[:300], exc_info=log.isEnabledFor(logging.DEBUG))

    def _shadow_only(self) -> bool:
        return self.live is None and self.request_log is None

    def _affordable(self, taken: list[Answered], rows: int) -> list[Answered]:
        """The answered batches the shadow's budget pays for now (whole ones, picked at random, in order), the
        rest counted. Picked one draw at a time: the budget usually pays for a few of thousands, and a shuffle
        of them all was Python holding the GIL."""
        assert self.shadow is not None
        k = self.shadow.budget.rows(rows)
        if k >= rows:
            return taken
        picked: set[int] = set()
        got = 0
        for _ in range(4 * len(taken) if k else 0):  # bounded: repeats are rare when few are picked
            i = self._rng.randrange(len(taken))
            if i in picked:
                continue
            if picked and got + taken[i].rows > k:
                break
            picked.add(i)
            got += taken[i].rows
            if got >= k:
                break
        self.shadow.skip(rows - got)
        return [taken[i] for i in sorted(picked)]

    def process(self, answered: Answered, started: float | None = None) -> None:
        """Shadow, summarise and log one chunk; ``started``: when a pass that is the shadow's alone began (what
        it cost before the challenger ran is charged to the shadow's budget too)."""
        rows = answered.rows
        champion = {k: predictions.prediction_to_arrow(p) for k, p in answered.preds.items()}
        version, challenger = (self.shadow.score(answered.feeds, rows, champion, since=started)
                               if self.shadow is not None else (None, None))
        if self.live is not None:
            self.live.add(answered.feeds, champion, rows)
        if self.request_log is not None and any(r[3] for r in answered.requests):
            self.request_log.add(self._log_rows(answered, champion, version, challenger))

    def _log_rows(self, answered: Answered, champion: Mapping[str, pa.Array], version: str | None,
                  challenger: Mapping[str, pa.Array] | None) -> pa.Table:
        ids, times, keep = [], [], []
        for rid, received_ns, n, logged in answered.requests:
            ids += [rid] * n
            times += [received_ns // 1000] * n
            keep += [logged] * n
        rows = len(ids)
        columns: dict[str, pa.Array] = {
            "request_id": pa.array(ids, pa.string()),
            "received_at": pa.array(times, pa.timestamp("us", tz="UTC")),
            "model_version": pa.array([answered.version] * rows, pa.string()),
        }
        for b in self.plan.bindings:
            x = answered.feeds[b.input_name].reshape(rows, -1)
            for j, name in enumerate(b.columns):
                columns[name] = predictions.numeric_array(np.ascontiguousarray(x[:, j]))
        columns.update(champion)
        if self._challenger_schema is not None:
            columns["challenger_version"] = pa.array([version] * rows, pa.string())
            for field in self._challenger_schema:
                got = challenger.get(field.name) if challenger is not None else None
                columns["challenger_" + field.name] = got if got is not None else pa.nulls(rows, field.type)
        table = pa.table(columns)
        return table if all(keep) else table.filter(pa.array(keep))

    def close(self, timeout: float = 30.0) -> None:
        """Process what is queued, then flush the request log."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self.request_log is not None:
            self.request_log.close(timeout)

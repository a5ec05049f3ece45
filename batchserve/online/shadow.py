"""Online shadow: a challenger scores the rows the champion answered, after the answer, off the
request's path; its errors never reach a client. Agreement is measured as the batch challenger section
measures it (:mod:`batchserve.compare`: mean and max absolute difference, label agreement, PSI of the
challenger's scores against the champion's), since the challenger's current version was swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve import compare, predictions, scoring
from batchserve.errors import ModelError
from batchserve.online.slots import Served, Slots
from batchserve.online.telemetry import Telemetry

__all__ = ["OnlineShadow", "Budget"]

log = logging.getLogger("batchserve.serve")
_WARN_EVERY = 60.0
#: The bucket holds at most this many seconds of budget (times the share): one pass of the challenger is
#: short (10 ms at the default share), so it never holds a core long enough to show in the answers' p99.
_BURST_SECONDS = 0.1
#: Rows scored while the cost per row is unknown: a probe, not a whole chunk of a challenger that may
#: take milliseconds a row.
_PROBE_ROWS = 32


class Budget:
    """How much challenger time the after-answer thread may spend: a token bucket of seconds that fills at
    ``share`` seconds per second (the share of one core) and holds at most ``share`` x 0.1 s. Each chunk
    scores as many rows as the tokens pay for at the cost per row measured so far; a chunk that costs more
    than was left drives the bucket below zero and the next chunks wait for it to refill. So over any
    stretch the challenger takes at most ``share`` of one core plus one chunk, whatever it costs per row
    (and the first chunk, whose cost is not known yet, is a probe of a few rows). A share of 1 is no
    budget: every row the thread keeps up with is scored.

        >>> t = [0.0]
        >>> b = Budget(0.1, clock=lambda: t[0])
        >>> b.rows(100)          # no cost known yet: a probe of 32 rows
        32
        >>> b.spend(32, 0.02)    # it took 20 ms: 10 ms over what the bucket held
        >>> t[0] = 0.05; b.rows(100)   # refilled 5 ms: still below zero
        0
        >>> t[0] = 1.0; b.rows(100)    # full again (10 ms) at 0.625 ms a row: 16 rows
        16
    """

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.capacity = share * _BURST_SECONDS
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self.per_row: float | None = None

    def rows(self, wanted: int) -> int:
        if self.share >= 1:  # a whole core: all the one after-answer thread can take anyway, so no budget
            return wanted
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.share)
        self._last = now
        if self.tokens <= 0:
            return 0
        if not self.per_row:
            return min(wanted, _PROBE_ROWS)
        return min(wanted, int(self.tokens / self.per_row))

    def spend(self, rows: int, seconds: float) -> None:
        self.tokens -= seconds
        if rows:
            cost = seconds / rows
            self.per_row = cost if self.per_row is None else 0.7 * self.per_row + 0.3 * cost


class OnlineShadow:
    """The challenger beside the served model, and how the two compare."""

    def __init__(self, slots: Slots, champion: scoring.FeaturePlan, *, budget: float = 1.0,
                 telemetry: Telemetry | None = None) -> None:
        self.slots = slots
        self.champion = champion
        self.budget = Budget(budget)
        self._telemetry = telemetry
        self._comparisons: dict[str, compare.Comparison] = {}
        self._version: str | None = None
        self._lock = threading.Lock()
        self._warned = 0.0
        self._rng = np.random.default_rng()
        self.failures = 0
        self.scored_rows = 0
        self.skipped_rows = 0

    def check(self) -> None:
        """Refuse at startup a challenger that needs a feature the champion's requests do not carry."""
        missing = [f for f in self.slots.current.plan.features if f not in self.champion.features]
        if missing:
            raise ModelError(f"the challenger needs feature(s) {', '.join(missing)} that the served model's "
                             f"requests do not carry ({', '.join(self.champion.features)})")

    def _feeds(self, served: Served, feeds: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
        if served.plan.bindings == self.champion.bindings:
            return feeds  # the same arrays, as the batch challenger reuses the champion's
        columns = {}
        for b in self.champion.bindings:  # one column per feature, then the challenger's own mapping
            x = feeds[b.input_name].reshape(rows, -1)
            for j, name in enumerate(b.columns):
                columns[name] = predictions.numeric_array(np.ascontiguousarray(x[:, j]))
        batch = pa.RecordBatch.from_arrays([columns[f] for f in served.plan.features], names=list(served.plan.features))
        return scoring.batch_to_feeds(batch, served.plan)

    def skip(self, rows: int) -> None:
        """Count rows the budget left unscored."""
        self.skipped_rows += rows
        if self._telemetry is not None:
            self._telemetry.shadow_skipped.inc(rows)

    def score(self, feeds: Mapping[str, np.ndarray], rows: int, champion: Mapping[str, pa.Array],
              since: float | None = None) -> tuple[str | None, dict[str, pa.Array] | None]:
        """The challenger's version and prediction columns for these rows: null where the budget left a row
        unscored (a random sample of the chunk is scored), None after a failure or when none was. ``since``:
        the start of a pass that is the shadow's alone, already cut to what the budget pays for
        (``Tap._affordable``), whose whole time is charged; without it, the budget decides here and is
        charged the challenger's own run."""
        served = self.slots.current
        k = rows if since is not None else self.budget.rows(rows)
        if k == 0:
            self.skip(rows)
            return served.version, None
        picked = None if k >= rows else np.sort(self._rng.choice(rows, k, replace=False))
        if picked is not None:
            self.skip(rows - k)
            feeds = {name: v[picked] for name, v in feeds.items()}
            champion = {name: c.take(pa.array(picked)) for name, c in champion.items()}
        start = since if since is not None else time.perf_counter()
        try:
            preds = served.run(self._feeds(served, feeds, k), k)
            columns = {name: predictions.prediction_to_arrow(p) for name, p in preds.items()}
        except Exception as exc:  # noqa: BLE001 - a challenger's failure is counted and logged, never answered
            self.budget.spend(k, time.perf_counter() - start)
            self.failures += 1
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.warning("challenger %s version %s failed on %d row(s): %s", self.slots.name, served.version,
                            rows, " ".join(str(exc).split())[:300], extra={"fields": {"event": "shadow_failed"}})
            return served.version, None
        self.scored_rows += k
        part = compare.compare_batch(champion, columns)
        with self._lock:
            if served.version != self._version:
                self._version, self._comparisons = served.version, {}
            self._comparisons = compare.merge_comparisons([self._comparisons, part])
        if picked is not None:
            at = np.full(rows, -1, dtype=np.int64)  # each row's place among the scored ones; unscored: null
            at[picked] = np.arange(k)
            where = pa.array(at, mask=at < 0)
            columns = {name: c.take(where) for name, c in columns.items()}
        self.budget.spend(k, time.perf_counter() - start)
        return served.version, columns

    def section(self) -> dict[str, Any]:
        with self._lock:
            comparisons, version = dict(self._comparisons), self._version
        columns = compare.section_columns(comparisons)
        return {"model": self.slots.name, "version": version, "failures": self.failures,
                "budget": self.budget.share, "scored_rows": self.scored_rows, "skipped_rows": self.skipped_rows,
                "columns": {k: {f: getattr(c, f) for f in ("rows", "mean_abs_diff", "max_abs_diff", "agreement", "psi")}
                            for k, c in columns.items()}}

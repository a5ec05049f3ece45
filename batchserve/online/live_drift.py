"""Live drift: the mergeable summaries ``score`` keeps, over a window of live traffic, against a
reference, with the verdict ``score --reference`` would give over the same rows.

Rows arrive (after the answer, on the after-answer thread) as the arrays the model saw and the
prediction columns; they are summarised with :mod:`batchserve.statistics`, the functions the batch
worker uses, a few thousand rows at a time (a summary costs about 0.5 ms a column whatever its rows).
A feature counts as categorical when the model's input for it is not a float, which is what ``score``
decides reading the request logs (they hold the values the model saw). The window is a ring of eight
buckets (rows: ``window / 8`` each, rows cut at bucket boundaries; minutes: an eighth of the span each):
the oldest bucket leaves as a new one fills, so the figures cover between 7/8 of the window and all of
it, and never more.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve import drift, reference, scoring, statistics

__all__ = ["LiveDrift"]

_BUCKETS = 8
#: Rows kept raw before one summary call.
_SUMMARY_ROWS = 4096


@dataclasses.dataclass
class _Bucket:
    started: float
    rows: int = 0
    summaries: dict[str, drift.ColumnSummary] = dataclasses.field(default_factory=dict)
    raw: list[tuple[Mapping[str, np.ndarray], Mapping[str, pa.Array], int]] = dataclasses.field(default_factory=list)
    raw_rows: int = 0


class LiveDrift:
    """Drift of live traffic against one reference, over a rolling window."""

    def __init__(self, plan: scoring.FeaturePlan, ref: reference.Reference, policy: drift.DriftPolicy, *,
                 window_rows: int | None, window_seconds: float | None, output_order: list[str]) -> None:
        self.plan = plan
        self.reference = ref
        self.policy = policy
        self.window_rows = window_rows
        self.window_seconds = window_seconds
        self._order = {name: i for i, name in enumerate(output_order)}
        self._kinds = tuple(np.dtype(b.dtype).kind != "f" for b in plan.bindings for _ in b.columns)
        self._nulls = {c: 0 for b in plan.bindings for c in b.columns}  # nulls reached the model as NaN
        self._buckets: collections.deque[_Bucket] = collections.deque([_Bucket(time.monotonic())])
        self._lock = threading.Lock()

    def add(self, feeds: Mapping[str, np.ndarray], preds: Mapping[str, pa.Array], rows: int) -> None:
        """Rows answered (the arrays are kept until summarised, not copied). A window of rows is cut at row
        boundaries: a chunk larger than what the current bucket has room for fills it and goes on into the
        next ones, so the ring never holds more rows than the window (a chunk of 8,192 rows used to land in
        one bucket of a 20,000-row window whole, and the window held twice what was asked)."""
        with self._lock:
            start = 0
            while start < rows:
                self._roll(time.monotonic())
                bucket = self._buckets[-1]
                take = rows - start
                if self.window_rows is not None:
                    take = min(take, max(1, self._bucket_rows() - bucket.rows))
                part: tuple[Mapping[str, np.ndarray], Mapping[str, pa.Array], int] = (feeds, preds, rows)
                if start or take < rows:
                    part = ({k: v[start:start + take] for k, v in feeds.items()},
                            {k: v.slice(start, take) for k, v in preds.items()}, take)
                bucket.raw.append(part)
                bucket.raw_rows += take
                bucket.rows += take
                if bucket.raw_rows >= _SUMMARY_ROWS:
                    self._summarise(bucket)
                start += take

    def _bucket_rows(self) -> int:
        assert self.window_rows is not None
        return max(1, self.window_rows // _BUCKETS)

    def _roll(self, now: float) -> None:
        current = self._buckets[-1]
        if self.window_rows is not None:
            full = current.rows >= self._bucket_rows()
        else:
            assert self.window_seconds is not None
            full = now - current.started >= self.window_seconds / _BUCKETS
        if full:
            self._summarise(current)
            self._buckets.append(_Bucket(now))
        while len(self._buckets) > _BUCKETS:
            self._buckets.popleft()

    def _summarise(self, bucket: _Bucket) -> None:
        if not bucket.raw:
            return
        items, bucket.raw, bucket.raw_rows = bucket.raw, [], 0
        names = items[0][0].keys()
        feeds = {k: np.concatenate([i[0][k] for i in items]) if len(items) > 1 else items[0][0][k] for k in names}
        preds = {k: pa.concat_arrays([i[1][k] for i in items]) if len(items) > 1 else items[0][1][k]
                 for k in items[0][1]}
        fresh = {**statistics.summarize_features(self.plan, feeds, self._nulls, self._kinds),
                 **statistics.prediction_statistics(preds)}
        for k, v in fresh.items():
            bucket.summaries[k] = drift.merge(bucket.summaries[k], v) if k in bucket.summaries else v

    def current(self) -> tuple[dict[str, drift.ColumnSummary], int]:
        """The window's merged summaries and its rows."""
        with self._lock:
            self._roll(time.monotonic())
            for bucket in self._buckets:
                self._summarise(bucket)
            maps = [b.summaries for b in self._buckets if b.summaries]
            rows = sum(b.rows for b in self._buckets)
        return drift.merge_maps(maps), rows

    def section(self) -> dict[str, Any]:
        """The drift section a manifest carries, over the window, plus the window's size."""
        current, rows = self.current()
        feats = list(self.plan.features)
        preds = sorted((k for k in current if k not in set(feats)),
                       key=lambda n: (self._order.get(n.split(".")[0].split("[")[0], len(self._order)), n))
        section = reference.drift_section(current, feats, preds, self.reference, self.policy)
        window = ({"rows": self.window_rows} if self.window_rows is not None
                  else {"minutes": (self.window_seconds or 0) / 60})
        return {"window": window, "rows": rows, "drift": section.to_dict()}

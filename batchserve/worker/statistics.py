"""Drift statistics gathered while scoring, summarised in batches of at least ``rows`` rows.

Summarising costs a fixed ~0.5 ms per column and call (a KLL sketch built, moments, a merge), so a
500-row file summarised and merged on its own spent more on statistics than on inference (make
bench, small files: ~3 s of 15 for 2,000 files). Batches are instead kept raw until ``rows`` rows
are waiting, then summarised in one call; a bundle of small files hands each committed file's raw
batches to one bundle-wide buffer. A 65,536-row batch of a large file is summarised at once, as
before. Summaries are mergeable, so the order of folding changes nothing but the sketch's sampling.

The summaries of one scored batch are :mod:`batchserve.statistics`: the server summarises its live
traffic with the same functions, so live drift and batch drift agree by construction.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import pyarrow as pa

from batchserve import drift, scoring
from batchserve.statistics import feature_kinds, feature_nulls, prediction_statistics, summarize_features

__all__ = ["BatchStatistics"]

_Raw: TypeAlias = tuple[int, dict[str, np.ndarray], dict[str, int], tuple[bool, ...], dict[str, pa.Array]]


class BatchStatistics:
    """Feature and prediction summaries of the batches added, folded into ``stats``."""

    def __init__(self, plan: scoring.FeaturePlan, rows: int) -> None:
        self.plan = plan
        self.rows = max(1, rows)
        self.stats: dict[str, drift.ColumnSummary] = {}
        #: Raw batches not summarised yet: (rows, feeds, nulls, kinds, predictions), all of one kind.
        self._pending: list[_Raw] = []
        self._pending_rows = 0

    def add(self, batch: pa.RecordBatch, feeds: dict[str, np.ndarray], preds: dict[str, pa.Array]) -> None:
        """One scored batch (the arrays are kept, not copied: callers make new ones per batch)."""
        kinds = feature_kinds(batch.schema, self.plan)
        self._queue((batch.num_rows, feeds, feature_nulls(batch, self.plan), kinds, preds))

    def absorb(self, other: BatchStatistics) -> None:
        """Take over another buffer's summaries and raw batches (a committed file's, into its bundle's)."""
        if other.stats:
            self.stats = drift.merge_maps([self.stats, other.stats]) if self.stats else other.stats
        for item in other._pending:
            self._queue(item)
        other._pending, other._pending_rows, other.stats = [], 0, {}

    def finish(self) -> dict[str, drift.ColumnSummary]:
        """Summarise what is waiting and return the summaries."""
        self._flush()
        return self.stats

    def _queue(self, item: _Raw) -> None:
        if self._pending and (item[3] != self._pending[0][3] or _types(item[4]) != _types(self._pending[0][4])):
            self._flush()  # another kind of columns (an int file after a float one): summarised apart
        self._pending.append(item)
        self._pending_rows += item[0]
        if self._pending_rows >= self.rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        items, self._pending, self._pending_rows = self._pending, [], 0
        if len(items) == 1:
            _, feeds, nulls, kinds, preds = items[0]
        else:
            kinds = items[0][3]
            feeds = {k: np.concatenate([i[1][k] for i in items]) for k in items[0][1]}
            nulls = {c: sum(i[2][c] for i in items) for c in items[0][2]}
            preds = {k: pa.concat_arrays([i[4][k] for i in items]) for k in items[0][4]}
        fresh = {**summarize_features(self.plan, feeds, nulls, kinds), **prediction_statistics(preds)}
        for k, v in fresh.items():
            self.stats[k] = drift.merge(self.stats[k], v) if k in self.stats else v


def _types(preds: dict[str, pa.Array]) -> tuple[pa.DataType, ...]:
    return tuple(a.type for a in preds.values())

"""Drift statistics gathered while scoring, summarised in batches of at least ``rows`` rows.

Summarising costs a fixed ~0.5 ms per column and call (a KLL sketch built, moments, a merge), so a
500-row file summarised and merged on its own spent more on statistics than on inference (make
bench, small files: ~3 s of 15 for 2,000 files). Batches are instead kept raw until ``rows`` rows
are waiting, then summarised in one call; a bundle of small files hands each committed file's raw
batches to one bundle-wide buffer. A 65,536-row batch of a large file is summarised at once, as
before. Summaries are mergeable, so the order of folding changes nothing but the sketch's sampling.

The summaries of one scored batch (its features from the arrays fed to the model, its predictions
from the Arrow columns written) are here too, beside their one user: pure functions of arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pyarrow as pa

from batchserve import drift, predictions, scoring

__all__ = ["BatchStatistics", "feature_statistics", "feature_nulls", "feature_kinds", "summarize_features",
           "column_statistics", "prediction_statistics"]

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


# Summaries of scored batches (pure: Arrow batches and arrays in, drift summaries out).


def feature_statistics(
    batch: pa.RecordBatch, plan: scoring.FeaturePlan, feeds: Mapping[str, np.ndarray]
) -> dict[str, drift.ColumnSummary]:
    """Drift summaries of the features, from the arrays already built for the model."""
    return summarize_features(plan, feeds, feature_nulls(batch, plan), feature_kinds(batch.schema, plan))


def feature_nulls(batch: pa.RecordBatch, plan: scoring.FeaturePlan) -> dict[str, int]:
    """Each feature column's null count. One ``select`` finds every column: a ``batch.column(name)``
    per feature looked each name up in Python, per batch (for 500-row files, per file)."""
    names = [c for b in plan.bindings for c in b.columns]
    return dict(zip(names, (a.null_count for a in batch.select(names).columns), strict=True))


def feature_kinds(schema: pa.Schema, plan: scoring.FeaturePlan) -> tuple[bool, ...]:
    """Per feature column (in binding order), whether it is summarised as categories too (not a float)."""
    return tuple(not pa.types.is_floating(schema.field(c).type) for b in plan.bindings for c in b.columns)


def summarize_features(
    plan: scoring.FeaturePlan, feeds: Mapping[str, np.ndarray], nulls: Mapping[str, int], kinds: Sequence[bool]
) -> dict[str, drift.ColumnSummary]:
    """Drift summaries of the feature arrays fed to the model, given each column's nulls and kind."""
    out: dict[str, drift.ColumnSummary] = {}
    k = 0
    for b in plan.bindings:
        x = feeds[b.input_name]
        x2 = x.reshape(len(x), -1)
        cats = list(kinds[k : k + len(b.columns)])
        k += len(b.columns)
        summaries = drift.summarize_matrix(x2, [nulls[c] for c in b.columns], categorical=cats)
        for name, summary in zip(b.columns, summaries, strict=True):
            out[name] = summary
    return out


def column_statistics(name: str, arr: pa.Array) -> drift.ColumnSummary:
    """Summary of one Arrow column: numeric sketch, plus categories for ints/bools/strings."""
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        values = scoring.float_values(arr.cast(pa.int8()) if pa.types.is_boolean(t) else arr)
        return drift.summarize_numeric(
            values.astype(np.float64, copy=False), arr.null_count, categorical=not pa.types.is_floating(t)
        )
    return drift.summarize_categorical(arr.to_pylist(), arr.null_count)


def prediction_statistics(preds: Mapping[str, pa.Array]) -> dict[str, drift.ColumnSummary]:
    out: dict[str, drift.ColumnSummary] = {}
    for name, arr in preds.items():
        for flat_name, flat in predictions.flat_prediction_columns(name, arr):
            out[flat_name] = column_statistics(flat_name, flat)
    return out

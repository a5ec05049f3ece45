"""Drift summaries of scored rows: the features from the arrays fed to the model, the predictions from
the columns ``score`` writes. Pure functions of arrays, shared by the batch worker and the server's
live drift, so one row summarised online and in batch gives one summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from batchserve import drift, predictions, scoring

__all__ = ["feature_statistics", "feature_nulls", "feature_kinds", "summarize_features", "column_statistics",
           "prediction_statistics"]


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

"""Drift statistics gathered in batches (worker/statistics.py): many small batches summarised
together, or handed from a file to its bundle, give the statistics of all their rows at once;
a file whose batches were never handed over is not counted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchserve import drift, scoring
from batchserve.statistics import feature_statistics, prediction_statistics
from batchserve.worker.statistics import BatchStatistics
from tests.conftest import make_table

FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5"]
PLAN = scoring.FeaturePlan(tuple(FEATURES), (scoring.InputBinding("x", "float32", tuple(FEATURES), 2),))


def _scored(table: pa.Table) -> tuple[pa.RecordBatch, dict[str, np.ndarray], dict[str, pa.Array]]:
    batch = pa.RecordBatch.from_pydict(table.to_pydict(), schema=table.schema) if table.num_rows == 0 else \
        table.combine_chunks().to_batches()[0]
    feeds = scoring.batch_to_feeds(batch, PLAN)
    # a prediction column computed from the features in float64: its summary has an oracle too
    score = pa.array(feeds["x"].astype(np.float64).sum(axis=1))
    return batch, feeds, {"score": score, "label": pa.array((feeds["x"][:, 0] > 0).astype(np.int64))}


def _whole(tables: list[pa.Table]) -> dict[str, drift.ColumnSummary]:
    batch, feeds, preds = _scored(pa.concat_tables(tables))
    return {**feature_statistics(batch, PLAN, feeds), **prediction_statistics(preds)}


def _assert_same(got: dict[str, drift.ColumnSummary], want: dict[str, drift.ColumnSummary]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert (g.count, g.nulls, g.nonfinite, g.categories) == (w.count, w.nulls, w.nonfinite, w.categories), name
        # features are float32, and summaries shift them in float32: agreement to float32's precision
        assert g.mean == pytest.approx(w.mean, rel=1e-6, abs=1e-6 * (abs(w.mean) + w.std)), name
        assert g.std == pytest.approx(w.std, rel=1e-6, abs=1e-12), name
        assert (g.min, g.max) == (w.min, w.max), name


def test_small_batches_summarised_together_equal_the_summary_of_all_rows() -> None:
    tables = [make_table(n, seed=i, null_every=7 if i % 3 == 0 else 0) for i, n in enumerate([40, 500, 1, 300, 77])]
    stats = BatchStatistics(PLAN, rows=600)  # flushes once in the middle, once at the end
    for t in tables:
        stats.add(*_scored(t))
    _assert_same(stats.finish(), _whole(tables))


def test_a_bundle_counts_the_files_handed_to_it_and_only_those() -> None:
    tables = [make_table(50, seed=10 + i) for i in range(6)]
    bundle = BatchStatistics(PLAN, rows=120)
    for i, t in enumerate(tables):
        per_file = BatchStatistics(PLAN, rows=120)
        per_file.add(*_scored(t))
        per_file.add(*_scored(t.slice(0, 0)))  # an empty batch changes nothing
        if i != 3:  # file 3 failed after its batches were summarised: never handed over
            bundle.absorb(per_file)
    _assert_same(bundle.finish(), _whole([t for i, t in enumerate(tables) if i != 3]))


def test_batches_of_another_column_kind_are_summarised_apart() -> None:
    """A feature stored as int in one file and float in the next: its categories stop at the float."""
    ints = make_table(30, seed=1)
    floats = ints.set_column(ints.schema.get_field_index("f2"), "f2", ints.column("f2").cast(pa.float64()))
    stats = BatchStatistics(PLAN, rows=10_000)
    stats.add(*_scored(ints))
    stats.add(*_scored(floats))
    got = stats.finish()
    assert got["f2"].count == 60 and got["f2"].categories is None  # int categories merged with a float column
    assert got["f3"].categories is not None and sum(got["f3"].categories.values()) == 60

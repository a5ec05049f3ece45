"""Mergeable column statistics and drift metrics, computed in the same pass as scoring.

Pure: arrays in, summaries and numbers out; never a path. Every column gets a
:class:`ColumnSummary` that workers build per partition and the client merges.
Counts, nulls, moments (Chan's parallel formulas), min, max and category counts
merge exactly; the distribution is a KLL quantile sketch (Apache DataSketches,
the sketch whylogs uses), which merges with a proven rank-error bound (about
0.7% at ``SKETCH_K = 400``) whatever the column's scale: crowded values such as
probabilities near 1, years or latitudes are resolved as well as values near 0.

A profile and a run manifest store the same summaries, so either can be the
reference for the next run.

Metrics (their formulas and estimation error are in the README):

* PSI on the reference's decile bins, ``sum((c - r) * ln(c / r))``, empty bins
  floored at ``PSI_EPSILON``;
* KS: the largest gap between the two CDFs, on a grid of both sketches' quantiles;
* Wasserstein-1 between the two CDFs on that grid, divided by the reference's std;
* Jensen-Shannon distance (base 2, in [0, 1]) on the reference's 20 quantile bins;
* categorical columns: PSI and JS over categories, unseen categories pooled;
* null-rate change: current null share minus reference null share.

Example::

    >>> a = summarize_numeric(np.array([1.0, 2.0, 3.0]))
    >>> b = summarize_numeric(np.array([4.0]))
    >>> merge(a, b).count
    4
"""

# Modules: ``summary`` (mergeable summaries), ``metrics`` (PSI, KS, Wasserstein, JS; exact paths),
# ``policy`` (thresholds, deciding metric, compare_columns).

from __future__ import annotations

from batchserve.drift.metrics import METRICS, PSI_EPSILON, js, ks, psi, wasserstein
from batchserve.drift.policy import DEFAULT_THRESHOLDS, DriftPolicy, compare_columns, parse_policy
from batchserve.drift.summary import (
    CATEGORY_CAP,
    SKETCH_FULL_ROWS,
    SKETCH_K,
    SKETCH_STRIDE,
    ColumnSummary,
    bin_shares,
    describe_column,
    merge,
    merge_maps,
    quantile,
    quantiles,
    summarize_categorical,
    summarize_matrix,
    summarize_numeric,
)

__all__ = [
    "SKETCH_K",
    "SKETCH_FULL_ROWS",
    "SKETCH_STRIDE",
    "CATEGORY_CAP",
    "PSI_EPSILON",
    "DEFAULT_THRESHOLDS",
    "METRICS",
    "ColumnSummary",
    "summarize_numeric",
    "summarize_matrix",
    "summarize_categorical",
    "merge",
    "merge_maps",
    "quantile",
    "quantiles",
    "bin_shares",
    "describe_column",
    "psi",
    "ks",
    "wasserstein",
    "js",
    "compare_columns",
    "DriftPolicy",
    "parse_policy",
]

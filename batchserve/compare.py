"""Champion vs challenger, in the scoring pass: mergeable summaries of how two models' predictions
differ on the same rows, and the manifest section built from them.

Pure: Arrow prediction columns in, summaries out. Per flattened prediction column (``score``,
``probabilities.1``, ``label``) a worker keeps the signed differences (for their histogram), the
absolute differences (mean and max, exactly), both models' score distributions (for PSI), and for
integer-valued columns (classifier labels) how many rows agree. The client merges them as it
merges drift summaries.

Example::

    >>> import pyarrow as pa
    >>> c = compare_batch({"y": pa.array([0.1, 0.5])}, {"y": pa.array([0.2, 0.5])})
    >>> round(section_columns(c)["y"].max_abs_diff, 6)
    0.1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve import drift
from batchserve.predictions import flat_prediction_columns

__all__ = ["Comparison", "ColumnComparison", "ChallengerSection", "compare_batch", "merge_comparisons",
           "section_columns"]

#: Bins of the difference histogram (equal width between the 0.5% and 99.5% quantiles of the differences).
DIFF_BINS = 30


@dataclasses.dataclass(eq=False)
class Comparison:
    """One flattened prediction column, champion vs challenger, over some rows (mergeable)."""

    diff: drift.ColumnSummary
    absdiff: drift.ColumnSummary
    champion: drift.ColumnSummary
    challenger: drift.ColumnSummary
    #: Rows where both predictions are integer-valued (labels), and how many of those agree.
    labelled: int = 0
    agree: int = 0


def _values(arr: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int8())
    return np.asarray(arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def _flat(preds: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    out: dict[str, pa.Array] = {}
    for name, arr in preds.items():
        for flat_name, flat in flat_prediction_columns(name, arr):
            if pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type) or pa.types.is_boolean(flat.type):
                out[flat_name] = flat
    return out


def compare_batch(champion: Mapping[str, pa.Array], challenger: Mapping[str, pa.Array]) -> dict[str, Comparison]:
    """Summaries of one batch, for every numeric prediction column both models produce."""
    a_cols, b_cols = _flat(champion), _flat(challenger)
    out = {}
    for name in a_cols.keys() & b_cols.keys():
        a, b = _values(a_cols[name]), _values(b_cols[name])
        d = b - a
        integral = not (pa.types.is_floating(a_cols[name].type) or pa.types.is_floating(b_cols[name].type))
        both = np.isfinite(a) & np.isfinite(b)
        out[name] = Comparison(
            diff=drift.summarize_numeric(d), absdiff=drift.summarize_numeric(np.abs(d)),
            # label columns keep their per-label counts: the report draws labels, not a degenerate histogram
            champion=drift.summarize_numeric(a, categorical=integral),
            challenger=drift.summarize_numeric(b, categorical=integral),
            labelled=int(both.sum()) if integral else 0, agree=int((a[both] == b[both]).sum()) if integral else 0,
        )
    return out


def merge_comparisons(parts: Iterable[Mapping[str, Comparison]]) -> dict[str, Comparison]:
    out: dict[str, Comparison] = {}
    for part in parts:
        for name, c in part.items():
            o = out.get(name)
            out[name] = c if o is None else Comparison(
                drift.merge(o.diff, c.diff), drift.merge(o.absdiff, c.absdiff), drift.merge(o.champion, c.champion),
                drift.merge(o.challenger, c.challenger), o.labelled + c.labelled, o.agree + c.agree,
            )
    return out


@dataclasses.dataclass(frozen=True)
class ColumnComparison:
    """What the manifest says about one prediction column."""

    rows: int
    mean_abs_diff: float | None
    max_abs_diff: float | None
    #: Signed differences (challenger - champion): ``edges`` and ``shares``.
    diff_histogram: dict[str, Any]
    #: Share of rows whose labels agree (integer-valued columns only).
    agreement: float | None
    #: PSI of the challenger's score distribution against the champion's (champion deciles).
    psi: float | None
    #: Both score distributions on the same bins, for the report's overlay.
    distributions: dict[str, Any]


def _histogram(s: drift.ColumnSummary) -> dict[str, Any]:
    lo, hi = drift.quantiles(s, [0.005, 0.995])
    if lo is None or hi is None:
        return {}
    if hi <= lo:
        hi = lo + 1e-9
    edges = [lo + (hi - lo) * i / DIFF_BINS for i in range(DIFF_BINS + 1)]
    return {"edges": [round(e, 9) for e in edges],
            "shares": [round(float(v), 6) for v in drift.bin_shares(s, edges[1:-1])]}


def _overlay(a: drift.ColumnSummary, b: drift.ColumnSummary) -> dict[str, Any]:
    """Both score distributions on the same bins; a label column's as shares per label."""
    if a.categories is not None and b.categories is not None and a.count and b.count:
        labels = sorted({*a.categories, *b.categories}, key=lambda k: (len(k), k))[:30]
        return {"categories": labels,
                "champion": [round(a.categories.get(k, 0) / a.count, 6) for k in labels],
                "challenger": [round(b.categories.get(k, 0) / b.count, 6) for k in labels]}
    qs = [q for s in (a, b) for q in drift.quantiles(s, [0.005, 0.995]) if q is not None]
    if not qs:
        return {}
    lo, hi = min(qs), max(qs)
    hi = hi if hi > lo else lo + 1e-9
    edges = [lo + (hi - lo) * i / DIFF_BINS for i in range(DIFF_BINS + 1)]
    return {"edges": [round(e, 9) for e in edges],
            "champion": [round(float(v), 6) for v in drift.bin_shares(a, edges[1:-1])],
            "challenger": [round(float(v), 6) for v in drift.bin_shares(b, edges[1:-1])]}


def section_columns(comparisons: Mapping[str, Comparison]) -> dict[str, ColumnComparison]:
    out = {}
    for name in sorted(comparisons):
        c = comparisons[name]
        out[name] = ColumnComparison(
            rows=c.absdiff.count,
            mean_abs_diff=c.absdiff.mean if c.absdiff.count else None,
            max_abs_diff=c.absdiff.max,
            diff_histogram=_histogram(c.diff),
            agreement=(c.agree / c.labelled) if c.labelled else None,
            psi=drift.psi(c.champion, c.challenger),
            distributions=_overlay(c.champion, c.challenger),
        )
    return out


@dataclasses.dataclass(frozen=True)
class ChallengerSection:
    """The manifest's ``challenger``: which model, where its output went, and how it differs."""

    model: dict[str, Any]
    output: str
    columns: dict[str, ColumnComparison]
    #: Inference seconds of each model, summed over tasks (the challenger's is its whole extra cost).
    infer_seconds: dict[str, float]
    #: Files the challenger failed on (``relpath``, ``error``): its file was not written, the champion's was.
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChallengerSection:
        return cls(dict(d["model"]), str(d["output"]),
                   {n: ColumnComparison(**c) for n, c in d["columns"].items()}, dict(d["infer_seconds"]),
                   [dict(f) for f in d.get("failures", [])])

"""Mergeable column summaries: exact counts, moments and categories, and a KLL sketch of the values;
built per partition on the workers, merged on the client (merge(summary(a), summary(b)) == summary(a ++ b))."""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

__all__ = [
    "SKETCH_K",
    "SKETCH_FULL_ROWS",
    "SKETCH_STRIDE",
    "CATEGORY_CAP",
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
]


SKETCH_K = 1000


#: Batches above this many rows feed the KLL sketch 1 row in SKETCH_STRIDE (moments,
#: counts, extremes and categories always use every row).
SKETCH_FULL_ROWS = 8192


SKETCH_STRIDE = 16


CATEGORY_CAP = 50


@dataclasses.dataclass(eq=False)
class ColumnSummary:
    """Everything we keep about one column of one partition (or many, once merged)."""

    #: Finite, non-null values.
    count: int = 0
    nulls: int = 0
    #: NaN (beyond nulls) and +-inf, kept out of the moments and the sketch.
    nonfinite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float | None = None
    max: float | None = None
    #: Exact value counts while there are at most CATEGORY_CAP distinct values; None after.
    categories: dict[str, int] | None = dataclasses.field(default_factory=dict)
    #: KLL sketch of the finite values (None when there are none).
    sketch: kll_floats_sketch | None = None

    @property
    def total(self) -> int:
        return self.count + self.nulls + self.nonfinite

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    def sketch_bytes(self) -> bytes:
        return bytes(self.sketch.serialize()) if self.sketch is not None else b""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColumnSummary):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __getstate__(self) -> dict[str, Any]:
        # Dask pickles receipts: ship the sketch as its compact serialized form.
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(ColumnSummary.from_dict(state).__dict__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "nulls": self.nulls, "nonfinite": self.nonfinite, "mean": self.mean,
            "m2": self.m2, "min": self.min, "max": self.max, "categories": self.categories,
            "sketch": base64.b64encode(self.sketch_bytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnSummary:
        raw = base64.b64decode(d.get("sketch") or "")
        return cls(
            count=int(d["count"]), nulls=int(d.get("nulls", 0)), nonfinite=int(d.get("nonfinite", 0)),
            mean=float(d.get("mean", 0.0)), m2=float(d.get("m2", 0.0)), min=d.get("min"), max=d.get("max"),
            categories=d.get("categories"), sketch=kll_floats_sketch.deserialize(raw) if raw else None,
        )


def _category_counts(col: np.ndarray) -> dict[str, int] | None:
    """Exact counts of a finite integer-valued column, or None past CATEGORY_CAP values.

    Decided by the number of distinct values alone, so that merging the counts of
    parts always equals counting the whole.
    """
    if col.size == 0:
        return {}
    if not np.array_equal(col, np.round(col)):
        return None  # fractional values: not categories
    if len(np.unique(col[:1024])) > CATEGORY_CAP:
        return None  # cheap early exit: the whole column has more distinct values too
    lo, hi = float(col.min()), float(col.max())
    if hi - lo <= 4096:
        counts = np.bincount((col - lo).astype(np.int64))
        nz = np.flatnonzero(counts)
        pairs = [(lo + i, int(counts[i])) for i in nz]
    else:
        uniq, cnt = np.unique(col, return_counts=True)
        pairs = list(zip(uniq.tolist(), cnt.tolist(), strict=True))
    if len(pairs) > CATEGORY_CAP:
        return None
    return {_category_key(float(v)): int(c) for v, c in pairs}


def _category_key(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summarize_numeric(values: np.ndarray, nulls: int = 0, *, categorical: bool = False) -> ColumnSummary:
    """Summary of one column; ``values`` holds its nulls as NaN and ``nulls`` says how many.

    NaNs beyond the nulls, and +-inf, are counted as ``nonfinite``.
    """
    return summarize_matrix(np.asarray(values).reshape(-1, 1), [nulls], categorical=[categorical])[0]


def summarize_matrix(
    x: np.ndarray,
    nulls: Sequence[int],
    *,
    categorical: Sequence[bool] | None = None,
    rng: np.random.Generator | None = None,
) -> list[ColumnSummary]:
    """Summaries of every column of a feature matrix (nulls already NaN).

    ``x`` is the ``[N, F]`` array the model is fed, so statistics cost one more
    pass over memory that is already hot. Counts, moments, extremes and
    categories cover every row; in batches above ``SKETCH_FULL_ROWS`` rows the
    KLL sketch is fed one row in ``SKETCH_STRIDE`` (a systematic sample with a
    random offset), which is what keeps drift within its throughput budget.
    """
    n, f = x.shape
    categorical = categorical or [False] * f
    if n == 0:
        return [ColumnSummary(nulls=int(nulls[j])) for j in range(f)]
    xf = x if x.dtype.kind == "f" else x.astype(np.float64)
    finite = np.isfinite(xf)
    all_finite = bool(finite.all())
    counts = np.full(f, n) if all_finite else finite.sum(axis=0)
    # Shifted sums (by a value near each column's centre) keep the variance exact
    # in float64 even for columns like years or timestamps.
    head = xf[: min(n, 64)]
    if all_finite:
        shift = head.mean(axis=0)
    else:  # the finite values' mean; 0 for a column with none in its head (nanmean would warn in the logs)
        ok = finite[: len(head)]
        shift = np.where(ok, head, 0).sum(axis=0, dtype=np.float64) / np.maximum(ok.sum(axis=0), 1)
    d = xf - shift.astype(xf.dtype)
    if not all_finite:
        d = np.where(finite, d, 0)
    sums = d.sum(axis=0, dtype=np.float64)
    sumsq = np.einsum("ij,ij->j", d, d, dtype=np.float64)
    safe_counts = np.maximum(counts, 1)
    means = shift + sums / safe_counts
    m2 = np.maximum(sumsq - sums * sums / safe_counts, 0.0)
    if all_finite:
        mins, maxs = xf.min(axis=0), xf.max(axis=0)
    else:
        mins = np.where(finite, xf, np.inf).min(axis=0)
        maxs = np.where(finite, xf, -np.inf).max(axis=0)
    stride = SKETCH_STRIDE if n > SKETCH_FULL_ROWS else 1
    offset = int((rng or np.random.default_rng()).integers(stride)) if stride > 1 else 0
    sample = np.ascontiguousarray(xf[offset::stride].T, dtype=np.float32)
    sample_finite = None if all_finite else np.ascontiguousarray(finite[offset::stride].T)
    out: list[ColumnSummary] = []
    for j in range(f):
        cnt = int(counts[j])
        s = ColumnSummary(nulls=int(nulls[j]), nonfinite=max(0, n - cnt - int(nulls[j])))
        if cnt:
            s.count = cnt
            s.mean, s.m2 = float(means[j]), float(m2[j])
            s.min, s.max = float(mins[j]), float(maxs[j])
            col = sample[j] if sample_finite is None else sample[j][sample_finite[j]]
            if col.size:
                s.sketch = kll_floats_sketch(SKETCH_K)
                s.sketch.update(col)
        if categorical[j]:
            full = xf[:, j] if all_finite else xf[finite[:, j], j]
            s.categories = _category_counts(full)
        else:
            s.categories = None
        out.append(s)
    return out


def summarize_categorical(values: Sequence[Any] | np.ndarray, nulls: int = 0) -> ColumnSummary:
    """Summary of a string (or other non-numeric) column: counts per category only."""
    arr = np.asarray([v for v in values if v is not None], dtype=object)
    cats: dict[str, int] | None = {}
    if len(arr):
        uniq, counts = np.unique(arr.astype(str), return_counts=True)
        cats = None if len(uniq) > CATEGORY_CAP else {str(u): int(c) for u, c in zip(uniq, counts, strict=True)}
    return ColumnSummary(count=len(arr), nulls=nulls, categories=cats)


def merge(a: ColumnSummary, b: ColumnSummary) -> ColumnSummary:
    """Combine two summaries: exact for counts and moments, KLL's merge for the sketch."""
    n = a.count + b.count
    if n == 0:
        mean, m2 = 0.0, 0.0
    else:
        delta = b.mean - a.mean
        mean = a.mean + delta * b.count / n
        m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / n
    sketch = None
    if a.sketch is not None or b.sketch is not None:
        sketch = kll_floats_sketch(SKETCH_K)
        for part in (a.sketch, b.sketch):
            if part is not None:
                sketch.merge(part)
    cats: dict[str, int] | None
    if a.categories is None or b.categories is None:
        cats = None
    else:
        cats = dict(a.categories)
        for k2, v2 in b.categories.items():
            cats[k2] = cats.get(k2, 0) + v2
        if len(cats) > CATEGORY_CAP:
            cats = None
    mins = [v for v in (a.min, b.min) if v is not None]
    maxs = [v for v in (a.max, b.max) if v is not None]
    return ColumnSummary(
        count=n, nulls=a.nulls + b.nulls, nonfinite=a.nonfinite + b.nonfinite, mean=mean, m2=m2,
        min=min(mins) if mins else None, max=max(maxs) if maxs else None, categories=cats, sketch=sketch,
    )


def merge_maps(maps: Iterable[Mapping[str, ColumnSummary]]) -> dict[str, ColumnSummary]:
    out: dict[str, ColumnSummary] = {}
    for m in maps:
        for name, s in m.items():
            out[name] = merge(out[name], s) if name in out else s
    return out


def quantile(s: ColumnSummary, q: float) -> float | None:
    return quantiles(s, [q])[0]


def quantiles(s: ColumnSummary, qs: Sequence[float]) -> list[float | None]:
    """Quantiles within KLL's rank error; the exact min and max at 0 and 1."""
    if s.count == 0 or s.sketch is None:
        return [None for _ in qs]
    inner = [q for q in qs if 0 < q < 1]
    # One sketch call for all ranks: KS and Wasserstein ask for thousands per column.
    found = iter(s.sketch.get_quantiles(inner) if inner else [])
    return [s.min if q <= 0 else s.max if q >= 1 else float(next(found)) for q in qs]


def _split_points(values: Iterable[float]) -> list[float]:
    """Ascending, unique as the sketch's float32 sees them (KLL refuses ties)."""
    return [float(v) for v in np.unique(np.asarray(list(values), dtype=np.float32))]


def _cdf(s: ColumnSummary, points: np.ndarray) -> np.ndarray:
    assert s.sketch is not None
    if len(points) == 0:
        return np.zeros(0)
    return np.asarray(s.sketch.get_cdf(list(points)))[:-1]


def bin_shares(s: ColumnSummary, edges: Sequence[float]) -> np.ndarray:
    """Shares of a column in bins cut at ``edges`` (interior edges, ascending)."""
    edges = _split_points(edges)
    if s.sketch is None or s.count == 0:
        return np.zeros(len(edges) + 1)
    if not edges:
        return np.ones(1)
    return np.asarray(s.sketch.get_pmf(edges, True), dtype=np.float64)


def describe_column(s: ColumnSummary) -> dict[str, Any]:
    """The per-column statistics every run records (and a later run can compare against)."""
    qs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    return {
        "count": s.count,
        "nulls": s.nulls,
        "nonfinite": s.nonfinite,
        "mean": s.mean if s.count else None,
        "std": s.std if s.count else None,
        "min": s.min,
        "max": s.max,
        "quantiles": {f"p{round(q * 100)}": v for q, v in zip(qs, quantiles(s, qs), strict=True)},
        "categories": s.categories,
    }
